//! libnvidia-ml.so.1 for OpenXPU: NVML's C ABI, answered from xpud.
//!
//! Every entry point catches panics (NVML_ERROR_UNKNOWN) and checks its pointers
//! (NVML_ERROR_INVALID_ARGUMENT), so no call can bring the calling process down.
#![allow(non_snake_case, clippy::missing_safety_doc, clippy::not_unsafe_ptr_arg_deref)]

mod affinity;
mod events;
mod prefetch;
mod ret;
mod state;
mod stubs;
mod visible;
mod xpud;

use ret::*;
use state::{library, with_reading, Device, State, MAX_DEVICES};
use std::ffi::{c_char, c_int, c_uint, c_ulong, c_ulonglong, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use xpud::DeviceTelemetry;

type Handle = *mut c_void;

const NVML_API_VERSION: u32 = 13;
const FEATURE_DISABLED: c_uint = 0;
const FEATURE_ENABLED: c_uint = 1;
// Not a PCI-SIG vendor: the emulated XPU's PCI identity ("XP").
const PCI_VENDOR_ID: u32 = 0x5850;
// Clock throttle / event reasons (nvmlClocksEventReason*).
const REASON_GPU_IDLE: u64 = 0x1;
const REASON_HW_SLOWDOWN: u64 = 0x8;
const REASON_HW_THERMAL_SLOWDOWN: u64 = 0x40;
const SUPPORTED_REASONS: u64 = REASON_GPU_IDLE | REASON_HW_SLOWDOWN | REASON_HW_THERMAL_SLOWDOWN;
// Topology levels (nvmlGpuTopologyLevel_t).
const TOPOLOGY_INTERNAL: c_uint = 0;
const TOPOLOGY_SINGLE: c_uint = 10;
const TOPOLOGY_NODE: c_uint = 40;
const TOPOLOGY_SYSTEM: c_uint = 50;
const PSTATE_BUSY: c_uint = 0;
const PSTATE_IDLE: c_uint = 8;
const NO_INSTANCE: c_uint = 0xFFFF_FFFF;

// Device handles are addresses inside this table: real, stable C pointers that callers
// (Go's garbage collector included) may hold, and that decode to an index without lookup.
static HANDLES: [u8; MAX_DEVICES] = [0; MAX_DEVICES];

fn handle_of(i: usize) -> Handle {
    HANDLES.as_ptr().wrapping_add(i) as Handle
}

fn guard(f: impl FnOnce() -> Result<(), Ret>) -> Ret {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => NVML_SUCCESS,
        Ok(Err(code)) => code,
        Err(_) => NVML_ERROR_UNKNOWN,
    }
}

fn with_state<T>(f: impl FnOnce(&mut State) -> Result<T, Ret>) -> Result<T, Ret> {
    let mut lib = library();
    f(lib.state.as_mut().ok_or(NVML_ERROR_UNINITIALIZED)?)
}

fn index_of(state: &State, h: Handle) -> Result<usize, Ret> {
    (h as usize)
        .checked_sub(HANDLES.as_ptr() as usize)
        .filter(|&i| i < state.devices.len())
        .ok_or(NVML_ERROR_INVALID_ARGUMENT)
}

fn with_device<T>(h: Handle, f: impl FnOnce(&mut State, usize) -> Result<T, Ret>) -> Result<T, Ret> {
    with_state(|s| {
        let i = index_of(s, h)?;
        f(s, i)
    })
}

/// A reading of a live device: GPU_IS_LOST when xpud reports it lost.
fn read<T>(h: Handle, f: impl FnOnce(&Device, &DeviceTelemetry) -> Result<T, Ret>) -> Result<T, Ret> {
    with_device(h, |s, i| with_reading(s, i, f))
}

fn need<T>(p: *const T) -> Result<(), Ret> {
    if p.is_null() {
        Err(NVML_ERROR_INVALID_ARGUMENT)
    } else {
        Ok(())
    }
}

fn put<T>(p: *mut T, value: T) -> Result<(), Ret> {
    need(p)?;
    unsafe { p.write_unaligned(value) };
    Ok(())
}

fn put_str(buf: *mut c_char, length: c_uint, text: &str) -> Result<(), Ret> {
    need(buf)?;
    if text.len() + 1 > length as usize {
        return Err(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), text.len());
        *buf.add(text.len()) = 0;
    }
    Ok(())
}

fn fixed<const N: usize>(text: &str) -> [c_char; N] {
    let mut out = [0 as c_char; N];
    for (o, b) in out.iter_mut().zip(text.bytes().take(N - 1)) {
        *o = b as c_char;
    }
    out
}

fn arg_str(p: *const c_char) -> Result<String, Ret> {
    need(p)?;
    Ok(unsafe { CStr::from_ptr(p) }.to_string_lossy().trim().to_owned())
}

fn rounded(x: f64) -> c_uint {
    x.max(0.0).round() as c_uint
}

// -- init and system --------------------------------------------------------------------

/// Flags (NO_GPUS, NO_ATTACH) change nothing: init with no visible device succeeds anyway,
/// and attaching costs nothing here.
fn init() -> Ret {
    guard(|| {
        let mut lib = library();
        if lib.refcount == 0 {
            lib.state = Some(State::open()?);
        }
        lib.refcount += 1;
        Ok(())
    })
}

#[no_mangle]
pub extern "C" fn nvmlInit_v2() -> Ret {
    init()
}

#[no_mangle]
pub extern "C" fn nvmlInit() -> Ret {
    init()
}

#[no_mangle]
pub extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> Ret {
    init()
}

#[no_mangle]
pub extern "C" fn nvmlShutdown() -> Ret {
    guard(|| {
        let last = {
            let mut lib = library();
            if lib.refcount == 0 {
                return Err(NVML_ERROR_UNINITIALIZED);
            }
            lib.refcount -= 1;
            if lib.refcount > 0 {
                None
            } else {
                lib.state.take()
            }
        };
        // Outside the library lock: the event and prefetch threads take it.
        if let Some(state) = last {
            events::free_all();
            if let Some(prefetcher) = state.prefetcher {
                prefetcher.stop();
            }
        }
        Ok(())
    })
}

#[no_mangle]
pub extern "C" fn nvmlErrorString(result: Ret) -> *const c_char {
    error_string(result)
}

#[no_mangle]
pub extern "C" fn nvmlSystemGetDriverVersion(version: *mut c_char, length: c_uint) -> Ret {
    guard(|| with_state(|s| put_str(version, length, &s.driver_version)))
}

#[no_mangle]
pub extern "C" fn nvmlSystemGetNVMLVersion(version: *mut c_char, length: c_uint) -> Ret {
    guard(|| with_state(|s| put_str(version, length, &format!("{NVML_API_VERSION}.{}", s.driver_version))))
}

/// The API level whose ABI this library implements (there is no CUDA on an XPU).
#[no_mangle]
pub extern "C" fn nvmlSystemGetCudaDriverVersion(version: *mut c_int) -> Ret {
    guard(|| with_state(|_| put(version, (NVML_API_VERSION * 1000) as c_int)))
}

#[no_mangle]
pub extern "C" fn nvmlSystemGetCudaDriverVersion_v2(version: *mut c_int) -> Ret {
    nvmlSystemGetCudaDriverVersion(version)
}

#[no_mangle]
pub extern "C" fn nvmlSystemGetProcessName(pid: c_uint, name: *mut c_char, length: c_uint) -> Ret {
    guard(|| {
        need(name)?;
        with_state(|s| {
            let snap = s.telemetry()?;
            let found = snap.devices.iter().flat_map(|d| &d.processes).find(|p| p.pid == pid);
            put_str(name, length, &found.ok_or(NVML_ERROR_NOT_FOUND)?.name)
        })
    })
}

// -- devices ----------------------------------------------------------------------------

#[no_mangle]
pub extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> Ret {
    guard(|| {
        need(count)?;
        with_state(|s| put(count, s.devices.len() as c_uint))
    })
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetCount(count: *mut c_uint) -> Ret {
    nvmlDeviceGetCount_v2(count)
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetHandleByIndex_v2(index: c_uint, device: *mut Handle) -> Ret {
    guard(|| {
        need(device)?;
        with_state(|s| {
            if index as usize >= s.devices.len() {
                return Err(NVML_ERROR_INVALID_ARGUMENT);
            }
            put(device, handle_of(index as usize))
        })
    })
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetHandleByIndex(index: c_uint, device: *mut Handle) -> Ret {
    nvmlDeviceGetHandleByIndex_v2(index, device)
}

fn handle_where(key: *const c_char, device: *mut Handle, matches: impl Fn(&Device, &str) -> bool) -> Ret {
    guard(|| {
        let key = arg_str(key)?;
        need(device)?;
        with_state(|s| {
            let i = s.devices.iter().position(|d| matches(d, &key)).ok_or(NVML_ERROR_NOT_FOUND)?;
            put(device, handle_of(i))
        })
    })
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetHandleByUUID(uuid: *const c_char, device: *mut Handle) -> Ret {
    handle_where(uuid, device, |d, key| d.info.uuid.eq_ignore_ascii_case(key))
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetHandleBySerial(serial: *const c_char, device: *mut Handle) -> Ret {
    handle_where(serial, device, |d, key| d.serial() == key)
}

/// Bus ids compare as numbers, so the legacy (4-digit domain) and current forms both match.
fn parse_bus_id(text: &str) -> Option<(u32, u32, u32)> {
    let mut parts = text.split(':').collect::<Vec<_>>();
    let dev_fn = parts.pop()?;
    let bus = u32::from_str_radix(parts.pop()?, 16).ok()?;
    let domain = match parts.pop() {
        Some(d) => u32::from_str_radix(d, 16).ok()?,
        None => 0,
    };
    let device = u32::from_str_radix(dev_fn.split('.').next()?, 16).ok()?;
    parts.is_empty().then_some((domain, bus, device))
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetHandleByPciBusId_v2(bus_id: *const c_char, device: *mut Handle) -> Ret {
    handle_where(bus_id, device, |d, key| parse_bus_id(key) == Some(d.pci_location()))
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetHandleByPciBusId(bus_id: *const c_char, device: *mut Handle) -> Ret {
    nvmlDeviceGetHandleByPciBusId_v2(bus_id, device)
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetIndex(device: Handle, index: *mut c_uint) -> Ret {
    guard(|| with_device(device, |_, i| put(index, i as c_uint)))
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetMinorNumber(device: Handle, minor: *mut c_uint) -> Ret {
    guard(|| with_device(device, |s, i| put(minor, s.devices[i].minor_number())))
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetName(device: Handle, name: *mut c_char, length: c_uint) -> Ret {
    guard(|| with_device(device, |s, i| put_str(name, length, &s.devices[i].info.product)))
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetUUID(device: Handle, uuid: *mut c_char, length: c_uint) -> Ret {
    guard(|| with_device(device, |s, i| put_str(uuid, length, &s.devices[i].info.uuid)))
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetSerial(device: Handle, serial: *mut c_char, length: c_uint) -> Ret {
    guard(|| with_device(device, |s, i| put_str(serial, length, &s.devices[i].serial())))
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetBrand(device: Handle, brand: *mut c_uint) -> Ret {
    guard(|| with_device(device, |_, _| put(brand, 0))) // NVML_BRAND_UNKNOWN
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetArchitecture(device: Handle, arch: *mut c_uint) -> Ret {
    guard(|| with_device(device, |_, _| put(arch, 0xFFFF_FFFF))) // NVML_DEVICE_ARCH_UNKNOWN
}

/// nvmlPciInfo_t of _v2 and _v3.
#[repr(C)]
pub struct PciInfo {
    bus_id_legacy: [c_char; 16],
    domain: c_uint,
    bus: c_uint,
    device: c_uint,
    pci_device_id: c_uint,
    pci_sub_system_id: c_uint,
    bus_id: [c_char; 32],
}

/// The first nvmlPciInfo_t: a legacy bus id and four reserved words.
#[repr(C)]
pub struct PciInfoV1 {
    bus_id: [c_char; 16],
    domain: c_uint,
    bus: c_uint,
    device: c_uint,
    pci_device_id: c_uint,
    pci_sub_system_id: c_uint,
    reserved: [c_uint; 4],
}

fn pci_info(d: &Device) -> PciInfo {
    let (domain, bus, device) = d.pci_location();
    let family: u32 = d.info.family.trim_start_matches(|c: char| !c.is_ascii_digit()).parse().unwrap_or(0);
    PciInfo {
        bus_id_legacy: fixed(&d.bus_id_legacy()),
        domain,
        bus,
        device,
        pci_device_id: (family << 16) | PCI_VENDOR_ID,
        pci_sub_system_id: (family << 16) | PCI_VENDOR_ID,
        bus_id: fixed(&d.bus_id()),
    }
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetPciInfo_v3(device: Handle, pci: *mut PciInfo) -> Ret {
    guard(|| with_device(device, |s, i| put(pci, pci_info(&s.devices[i]))))
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetPciInfo_v2(device: Handle, pci: *mut PciInfo) -> Ret {
    nvmlDeviceGetPciInfo_v3(device, pci)
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetPciInfo(device: Handle, pci: *mut PciInfoV1) -> Ret {
    guard(|| {
        with_device(device, |s, i| {
            let info = pci_info(&s.devices[i]);
            put(
                pci,
                PciInfoV1 {
                    bus_id: info.bus_id_legacy,
                    domain: info.domain,
                    bus: info.bus,
                    device: info.device,
                    pci_device_id: info.pci_device_id,
                    pci_sub_system_id: info.pci_sub_system_id,
                    reserved: [0; 4],
                },
            )
        })
    })
}

// -- memory -----------------------------------------------------------------------------

#[repr(C)]
pub struct Memory {
    total: c_ulonglong,
    free: c_ulonglong,
    used: c_ulonglong,
}

#[repr(C)]
pub struct MemoryV2 {
    version: c_uint,
    total: c_ulonglong,
    reserved: c_ulonglong,
    free: c_ulonglong,
    used: c_ulonglong,
}

const fn struct_version<T>(v: u32) -> c_uint {
    (std::mem::size_of::<T>() as u32) | (v << 24)
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetMemoryInfo(device: Handle, memory: *mut Memory) -> Ret {
    guard(|| {
        need(memory)?;
        read(device, |_, t| {
            put(
                memory,
                Memory { total: t.memory_total_bytes, free: t.memory_free_bytes, used: t.memory_used_bytes },
            )
        })
    })
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetMemoryInfo_v2(device: Handle, memory: *mut MemoryV2) -> Ret {
    guard(|| {
        need(memory)?;
        let version = unsafe { (*memory).version };
        if version != struct_version::<MemoryV2>(2) {
            return Err(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
        }
        read(device, |_, t| {
            put(
                memory,
                MemoryV2 {
                    version,
                    total: t.memory_total_bytes,
                    reserved: 0,
                    free: t.memory_free_bytes,
                    used: t.memory_used_bytes,
                },
            )
        })
    })
}

/// Large-BAR devices map all of their memory; the emulation maps none of it into hosts.
#[no_mangle]
pub extern "C" fn nvmlDeviceGetBAR1MemoryInfo(device: Handle, bar1: *mut Memory) -> Ret {
    guard(|| {
        need(bar1)?;
        read(device, |_, t| {
            put(bar1, Memory { total: t.memory_total_bytes, free: t.memory_total_bytes, used: 0 })
        })
    })
}

// -- readings ---------------------------------------------------------------------------

#[repr(C)]
pub struct Utilization {
    gpu: c_uint,
    memory: c_uint,
}

/// Memory-controller activity is not modelled: it reads 0.
#[no_mangle]
pub extern "C" fn nvmlDeviceGetUtilizationRates(device: Handle, utilization: *mut Utilization) -> Ret {
    guard(|| {
        need(utilization)?;
        read(device, |_, t| {
            put(utilization, Utilization { gpu: rounded(t.utilization_ratio * 100.0), memory: 0 })
        })
    })
}

const TEMPERATURE_GPU: c_uint = 0;

#[no_mangle]
pub extern "C" fn nvmlDeviceGetTemperature(device: Handle, sensor: c_uint, temp: *mut c_uint) -> Ret {
    guard(|| {
        need(temp)?;
        if sensor != TEMPERATURE_GPU {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        read(device, |_, t| {
            let celsius = t.temperature_celsius.ok_or(NVML_ERROR_GPU_IS_LOST)?;
            put(temp, rounded(celsius))
        })
    })
}

#[repr(C)]
pub struct TemperatureV1 {
    version: c_uint,
    sensor_type: c_uint,
    temperature: c_int,
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetTemperatureV(device: Handle, temperature: *mut TemperatureV1) -> Ret {
    guard(|| {
        need(temperature)?;
        let (version, sensor) = unsafe { ((*temperature).version, (*temperature).sensor_type) };
        if version != struct_version::<TemperatureV1>(1) {
            return Err(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
        }
        let mut value: c_uint = 0;
        match nvmlDeviceGetTemperature(device, sensor, &mut value) {
            NVML_SUCCESS => {
                put(temperature, TemperatureV1 { version, sensor_type: sensor, temperature: value as c_int })
            }
            code => Err(code),
        }
    })
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetTemperatureThreshold(
    device: Handle,
    threshold: c_uint,
    temp: *mut c_uint,
) -> Ret {
    guard(|| {
        need(temp)?;
        read(device, |d, _| match threshold {
            0 => put(temp, rounded(d.shutdown_celsius())),     // SHUTDOWN
            1 | 3 => put(temp, rounded(d.slowdown_celsius())), // SLOWDOWN, GPU_MAX
            8.. => Err(NVML_ERROR_INVALID_ARGUMENT),
            _ => Err(NVML_ERROR_NOT_SUPPORTED), // memory, acoustic and GPS limits: not modelled
        })
    })
}

fn milliwatts(watts: f64) -> c_uint {
    rounded(watts * 1000.0)
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetPowerUsage(device: Handle, power: *mut c_uint) -> Ret {
    guard(|| {
        need(power)?;
        read(device, |_, t| put(power, milliwatts(t.power_watts)))
    })
}

fn power_limit(device: Handle, limit: *mut c_uint) -> Ret {
    guard(|| {
        need(limit)?;
        read(device, |_, t| put(limit, milliwatts(t.power_limit_watts)))
    })
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetPowerManagementLimit(device: Handle, limit: *mut c_uint) -> Ret {
    power_limit(device, limit)
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetPowerManagementDefaultLimit(device: Handle, limit: *mut c_uint) -> Ret {
    power_limit(device, limit)
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetEnforcedPowerLimit(device: Handle, limit: *mut c_uint) -> Ret {
    power_limit(device, limit)
}

/// The limit is the board's TDP and cannot be changed: both bounds are that one value.
#[no_mangle]
pub extern "C" fn nvmlDeviceGetPowerManagementLimitConstraints(
    device: Handle,
    min_limit: *mut c_uint,
    max_limit: *mut c_uint,
) -> Ret {
    guard(|| {
        need(min_limit)?;
        need(max_limit)?;
        read(device, |_, t| {
            put(min_limit, milliwatts(t.power_limit_watts))?;
            put(max_limit, milliwatts(t.power_limit_watts))
        })
    })
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetPowerManagementMode(device: Handle, mode: *mut c_uint) -> Ret {
    guard(|| with_device(device, |_, _| put(mode, FEATURE_ENABLED)))
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetTotalEnergyConsumption(device: Handle, energy: *mut c_ulonglong) -> Ret {
    guard(|| {
        need(energy)?;
        read(device, |_, t| put(energy, (t.energy_joules.max(0.0) * 1000.0).round() as c_ulonglong))
    })
}

const CLOCK_GRAPHICS: c_uint = 0;
const CLOCK_SM: c_uint = 1;
const CLOCK_MEM: c_uint = 2;
const CLOCK_VIDEO: c_uint = 3;

fn clock(device: Handle, kind: c_uint, out: *mut c_uint, max: bool) -> Ret {
    guard(|| {
        need(out)?;
        read(device, |d, t| match kind {
            CLOCK_GRAPHICS | CLOCK_SM if max => put(out, d.info.max_clock_mhz),
            CLOCK_GRAPHICS | CLOCK_SM => put(out, rounded(t.clock_mhz)),
            CLOCK_MEM => put(out, t.memory_clock_mhz),
            CLOCK_VIDEO => Err(NVML_ERROR_NOT_SUPPORTED), // no video engine
            _ => Err(NVML_ERROR_INVALID_ARGUMENT),
        })
    })
}

/// Application clocks cannot be set: their target, default and boost limit are the maximum.
macro_rules! clock_queries {
    ($($name:ident => $max:expr;)*) => {$(
        #[no_mangle]
        pub extern "C" fn $name(device: Handle, kind: c_uint, clock_mhz: *mut c_uint) -> Ret {
            clock(device, kind, clock_mhz, $max)
        }
    )*};
}

clock_queries! {
    nvmlDeviceGetClockInfo => false;
    nvmlDeviceGetMaxClockInfo => true;
    nvmlDeviceGetApplicationsClock => true;
    nvmlDeviceGetDefaultApplicationsClock => true;
    nvmlDeviceGetMaxCustomerBoostClock => true;
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetClock(
    device: Handle,
    kind: c_uint,
    id: c_uint,
    clock_mhz: *mut c_uint,
) -> Ret {
    match id {
        0 => clock(device, kind, clock_mhz, false),    // CURRENT
        1..=3 => clock(device, kind, clock_mhz, true), // application target / default, boost max
        _ => guard(|| with_device(device, |_, _| Err(NVML_ERROR_INVALID_ARGUMENT))),
    }
}

fn reasons_of(t: &DeviceTelemetry) -> u64 {
    t.throttle_reasons
        .iter()
        .map(|r| match r.as_str() {
            "idle" => REASON_GPU_IDLE,
            "hw_thermal_slowdown" => REASON_HW_THERMAL_SLOWDOWN,
            "hw_thermal_shutdown" => REASON_HW_SLOWDOWN,
            _ => 0,
        })
        .fold(0, |a, b| a | b)
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetCurrentClocksEventReasons(device: Handle, reasons: *mut c_ulonglong) -> Ret {
    guard(|| {
        need(reasons)?;
        read(device, |_, t| put(reasons, reasons_of(t)))
    })
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetCurrentClocksThrottleReasons(
    device: Handle,
    reasons: *mut c_ulonglong,
) -> Ret {
    nvmlDeviceGetCurrentClocksEventReasons(device, reasons)
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetSupportedClocksEventReasons(device: Handle, reasons: *mut c_ulonglong) -> Ret {
    guard(|| with_device(device, |_, _| put(reasons, SUPPORTED_REASONS)))
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetSupportedClocksThrottleReasons(
    device: Handle,
    reasons: *mut c_ulonglong,
) -> Ret {
    nvmlDeviceGetSupportedClocksEventReasons(device, reasons)
}

/// P0 while work runs at full clocks, P8 when idle at idle clocks.
#[no_mangle]
pub extern "C" fn nvmlDeviceGetPerformanceState(device: Handle, pstate: *mut c_uint) -> Ret {
    guard(|| {
        need(pstate)?;
        read(device, |_, t| {
            put(pstate, if reasons_of(t) & REASON_GPU_IDLE != 0 { PSTATE_IDLE } else { PSTATE_BUSY })
        })
    })
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetPowerState(device: Handle, pstate: *mut c_uint) -> Ret {
    nvmlDeviceGetPerformanceState(device, pstate)
}

/// Passively cooled, like NVIDIA's SXM boards: no fans to report.
#[no_mangle]
pub extern "C" fn nvmlDeviceGetNumFans(device: Handle, count: *mut c_uint) -> Ret {
    guard(|| with_device(device, |_, _| put(count, 0)))
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetFanSpeed(device: Handle, speed: *mut c_uint) -> Ret {
    guard(|| {
        need(speed)?;
        with_device(device, |_, _| Err(NVML_ERROR_NOT_SUPPORTED))
    })
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetFanSpeed_v2(device: Handle, _fan: c_uint, speed: *mut c_uint) -> Ret {
    nvmlDeviceGetFanSpeed(device, speed)
}

// -- ECC, modes -------------------------------------------------------------------------

#[no_mangle]
pub extern "C" fn nvmlDeviceGetEccMode(device: Handle, current: *mut c_uint, pending: *mut c_uint) -> Ret {
    guard(|| {
        need(current)?;
        need(pending)?;
        with_device(device, |_, _| {
            put(current, FEATURE_ENABLED)?;
            put(pending, FEATURE_ENABLED)
        })
    })
}

/// xpud keeps lifetime counts across restarts, so the volatile and aggregate counters agree.
fn ecc_count(
    device: Handle,
    error_type: c_uint,
    counter_type: c_uint,
    count: *mut c_ulonglong,
) -> Result<(), Ret> {
    need(count)?;
    if counter_type > 1 {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    read(device, |_, t| match error_type {
        0 => put(count, t.ecc_corrected_total),
        1 => put(count, t.ecc_uncorrected_total),
        _ => Err(NVML_ERROR_INVALID_ARGUMENT),
    })
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetTotalEccErrors(
    device: Handle,
    error_type: c_uint,
    counter_type: c_uint,
    count: *mut c_ulonglong,
) -> Ret {
    guard(|| ecc_count(device, error_type, counter_type, count))
}

const MEMORY_LOCATION_DEVICE_MEMORY: c_uint = 2;

/// Only device memory has ECC in the model; caches and register files are not modelled.
#[no_mangle]
pub extern "C" fn nvmlDeviceGetMemoryErrorCounter(
    device: Handle,
    error_type: c_uint,
    counter_type: c_uint,
    location: c_uint,
    count: *mut c_ulonglong,
) -> Ret {
    guard(|| {
        if location != MEMORY_LOCATION_DEVICE_MEMORY {
            need(count)?;
            return with_device(device, |_, _| {
                Err(if location < 8 { NVML_ERROR_NOT_SUPPORTED } else { NVML_ERROR_INVALID_ARGUMENT })
            });
        }
        ecc_count(device, error_type, counter_type, count)
    })
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetComputeMode(device: Handle, mode: *mut c_uint) -> Ret {
    guard(|| with_device(device, |_, _| put(mode, 0))) // NVML_COMPUTEMODE_DEFAULT: shared
}

/// xpud keeps every device initialised whether or not a client is attached.
#[no_mangle]
pub extern "C" fn nvmlDeviceGetPersistenceMode(device: Handle, mode: *mut c_uint) -> Ret {
    guard(|| with_device(device, |_, _| put(mode, FEATURE_ENABLED)))
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetDisplayMode(device: Handle, mode: *mut c_uint) -> Ret {
    guard(|| with_device(device, |_, _| put(mode, FEATURE_DISABLED)))
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetDisplayActive(device: Handle, active: *mut c_uint) -> Ret {
    guard(|| with_device(device, |_, _| put(active, FEATURE_DISABLED)))
}

/// An XPU has no MIG: NOT_SUPPORTED, as NVML answers on GPUs without it.
#[no_mangle]
pub extern "C" fn nvmlDeviceGetMigMode(device: Handle, current: *mut c_uint, pending: *mut c_uint) -> Ret {
    guard(|| {
        need(current)?;
        need(pending)?;
        with_device(device, |_, _| Err(NVML_ERROR_NOT_SUPPORTED))
    })
}

#[no_mangle]
pub extern "C" fn nvmlDeviceIsMigDeviceHandle(device: Handle, is_mig: *mut c_uint) -> Ret {
    guard(|| with_device(device, |_, _| put(is_mig, 0)))
}

// -- processes --------------------------------------------------------------------------

#[repr(C)]
pub struct ProcessInfoV1 {
    pid: c_uint,
    used_gpu_memory: c_ulonglong,
}

#[repr(C)]
pub struct ProcessInfoV2 {
    pid: c_uint,
    used_gpu_memory: c_ulonglong,
    gpu_instance_id: c_uint,
    compute_instance_id: c_uint,
}

/// NVML's two-call protocol: too small a count answers INSUFFICIENT_SIZE with the count needed.
fn processes<T>(
    device: Handle,
    count: *mut c_uint,
    infos: *mut T,
    compute: bool,
    make: fn(c_uint, u64) -> T,
) -> Ret {
    guard(|| {
        need(count)?;
        let capacity = unsafe { *count } as usize;
        if capacity > 0 {
            need(infos)?;
        }
        read(device, |_, t| {
            let list: Vec<T> = if compute {
                t.processes.iter().map(|p| make(p.pid, p.memory_used_bytes)).collect()
            } else {
                Vec::new() // no graphics or MPS clients on an XPU
            };
            put(count, list.len() as c_uint)?;
            if list.len() > capacity {
                return Err(NVML_ERROR_INSUFFICIENT_SIZE);
            }
            for (i, info) in list.into_iter().enumerate() {
                unsafe { infos.add(i).write_unaligned(info) };
            }
            Ok(())
        })
    })
}

fn v1(pid: c_uint, used: u64) -> ProcessInfoV1 {
    ProcessInfoV1 { pid, used_gpu_memory: used }
}

fn v2(pid: c_uint, used: u64) -> ProcessInfoV2 {
    ProcessInfoV2 {
        pid,
        used_gpu_memory: used,
        gpu_instance_id: NO_INSTANCE,
        compute_instance_id: NO_INSTANCE,
    }
}

macro_rules! process_lists {
    ($($v1:ident, $v2:ident, $v3:ident, $compute:expr;)*) => {$(
        #[no_mangle]
        pub extern "C" fn $v1(device: Handle, count: *mut c_uint, infos: *mut ProcessInfoV1) -> Ret {
            processes(device, count, infos, $compute, v1)
        }
        #[no_mangle]
        pub extern "C" fn $v2(device: Handle, count: *mut c_uint, infos: *mut ProcessInfoV2) -> Ret {
            processes(device, count, infos, $compute, v2)
        }
        #[no_mangle]
        pub extern "C" fn $v3(device: Handle, count: *mut c_uint, infos: *mut ProcessInfoV2) -> Ret {
            processes(device, count, infos, $compute, v2)
        }
    )*};
}

process_lists! {
    nvmlDeviceGetComputeRunningProcesses, nvmlDeviceGetComputeRunningProcesses_v2,
        nvmlDeviceGetComputeRunningProcesses_v3, true;
    nvmlDeviceGetGraphicsRunningProcesses, nvmlDeviceGetGraphicsRunningProcesses_v2,
        nvmlDeviceGetGraphicsRunningProcesses_v3, false;
    nvmlDeviceGetMPSComputeRunningProcesses, nvmlDeviceGetMPSComputeRunningProcesses_v2,
        nvmlDeviceGetMPSComputeRunningProcesses_v3, false;
}

// -- NUMA, affinity, topology -----------------------------------------------------------

#[no_mangle]
pub extern "C" fn nvmlDeviceGetNumaNodeId(device: Handle, node: *mut c_uint) -> Ret {
    guard(|| with_device(device, |s, i| put(node, s.devices[i].info.numa_node)))
}

fn fill_mask(size: c_uint, set: *mut c_ulong, bits: &[usize]) -> Result<(), Ret> {
    need(set)?;
    if size == 0 {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    let word_bits = c_ulong::BITS as usize;
    let words = unsafe { std::slice::from_raw_parts_mut(set, size as usize) };
    words.fill(0);
    for &bit in bits {
        if let Some(w) = words.get_mut(bit / word_bits) {
            *w |= 1 << (bit % word_bits);
        }
    }
    Ok(())
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetCpuAffinity(device: Handle, size: c_uint, set: *mut c_ulong) -> Ret {
    guard(|| with_device(device, |s, i| fill_mask(size, set, &s.devices[i].cpus)))
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetCpuAffinityWithinScope(
    device: Handle,
    size: c_uint,
    set: *mut c_ulong,
    _scope: c_uint,
) -> Ret {
    nvmlDeviceGetCpuAffinity(device, size, set)
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetMemoryAffinity(
    device: Handle,
    size: c_uint,
    set: *mut c_ulong,
    _scope: c_uint,
) -> Ret {
    guard(|| with_device(device, |s, i| fill_mask(size, set, &[s.devices[i].info.numa_node as usize])))
}

/// A link group is one switch (PIX); across groups on one NUMA node, NODE; else SYS.
fn level_between(a: &Device, b: &Device) -> c_uint {
    if a.host_index == b.host_index {
        TOPOLOGY_INTERNAL
    } else if a.info.link_group == b.info.link_group {
        TOPOLOGY_SINGLE
    } else if a.info.numa_node == b.info.numa_node {
        TOPOLOGY_NODE
    } else {
        TOPOLOGY_SYSTEM
    }
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetTopologyCommonAncestor(
    device1: Handle,
    device2: Handle,
    level: *mut c_uint,
) -> Ret {
    guard(|| {
        need(level)?;
        with_state(|s| {
            let (a, b) = (index_of(s, device1)?, index_of(s, device2)?);
            put(level, level_between(&s.devices[a], &s.devices[b]))
        })
    })
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetTopologyNearestGpus(
    device: Handle,
    level: c_uint,
    count: *mut c_uint,
    devices: *mut Handle,
) -> Ret {
    guard(|| {
        need(count)?;
        with_device(device, |s, i| {
            let near: Vec<usize> = (0..s.devices.len())
                .filter(|&j| j != i && level_between(&s.devices[i], &s.devices[j]) <= level)
                .collect();
            let capacity = unsafe { *count } as usize;
            put(count, near.len() as c_uint)?;
            if devices.is_null() || capacity == 0 {
                return Ok(()); // the size query
            }
            if near.len() > capacity {
                return Err(NVML_ERROR_INSUFFICIENT_SIZE);
            }
            for (k, j) in near.into_iter().enumerate() {
                unsafe { devices.add(k).write_unaligned(handle_of(j)) };
            }
            Ok(())
        })
    })
}

// -- events -----------------------------------------------------------------------------

#[no_mangle]
pub extern "C" fn nvmlEventSetCreate(set: *mut Handle) -> Ret {
    guard(|| {
        need(set)?;
        with_state(|_| put(set, events::create()))
    })
}

#[no_mangle]
pub extern "C" fn nvmlEventSetFree(set: Handle) -> Ret {
    guard(|| {
        with_state(|_| Ok(()))?;
        match events::free(set) {
            NVML_SUCCESS => Ok(()),
            code => Err(code),
        }
    })
}

#[no_mangle]
pub extern "C" fn nvmlDeviceGetSupportedEventTypes(device: Handle, types: *mut c_ulonglong) -> Ret {
    guard(|| with_device(device, |_, _| put(types, events::SUPPORTED_EVENTS)))
}

#[no_mangle]
pub extern "C" fn nvmlDeviceRegisterEvents(device: Handle, types: c_ulonglong, set: Handle) -> Ret {
    guard(|| {
        let (host, socket) =
            with_device(device, |s, i| Ok((s.devices[i].host_index, s.socket().to_path_buf())))?;
        let set = events::find(set).ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
        if types & !events::SUPPORTED_EVENTS != 0 {
            return Err(NVML_ERROR_NOT_SUPPORTED);
        }
        match events::register(&set, host, device, types, &socket) {
            NVML_SUCCESS => Ok(()),
            code => Err(code),
        }
    })
}

fn wait_event(set: Handle, timeout_ms: c_uint) -> Result<events::EventData, Ret> {
    with_state(|_| Ok(()))?;
    let set = events::find(set).ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
    events::wait(&set, timeout_ms)
}

#[no_mangle]
pub extern "C" fn nvmlEventSetWait_v2(set: Handle, data: *mut events::EventData, timeout_ms: c_uint) -> Ret {
    guard(|| {
        need(data)?;
        put(data, wait_event(set, timeout_ms)?)
    })
}

#[no_mangle]
pub extern "C" fn nvmlEventSetWait(set: Handle, data: *mut events::EventDataV1, timeout_ms: c_uint) -> Ret {
    guard(|| {
        need(data)?;
        let e = wait_event(set, timeout_ms)?;
        put(
            data,
            events::EventDataV1 { device: e.device, event_type: e.event_type, event_data: e.event_data },
        )
    })
}

#[no_mangle]
pub extern "C" fn nvmlUnitGetCount(count: *mut c_uint) -> Ret {
    guard(|| with_state(|_| put(count, 0)))
}

#[no_mangle]
pub extern "C" fn nvmlGetExcludedDeviceCount(count: *mut c_uint) -> Ret {
    guard(|| with_state(|_| put(count, 0)))
}
