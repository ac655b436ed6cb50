//! What one process's NVML knows: the devices it may see, and a short-lived telemetry
//! snapshot so a query costs a lookup, not a round trip to xpud.

use crate::prefetch::{Cadence, Prefetcher};
use crate::ret::*;
use crate::xpud::{Connection, DeviceInfo, DeviceTelemetry, Error, Inventory, Telemetry};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub const CACHE_ENV: &str = "OPENXPU_NVML_CACHE_MS";
// A monitoring loop reads a dozen values per device in a burst: one snapshot serves the burst.
const DEFAULT_CACHE: Duration = Duration::from_millis(100);
// Profile defaults (runtime profiles.py) until xpud's inventory reports the thresholds.
const DEFAULT_SLOWDOWN_CELSIUS: f64 = 85.0;
const DEFAULT_SHUTDOWN_CELSIUS: f64 = 95.0;
pub const MAX_DEVICES: usize = 1024;
// How long before a monitor's next burst its snapshot is fetched: the burst may come this
// much early or this much late (until the cache lifetime runs out) and still find it fresh.
const PREFETCH_LEAD_SHARE: u32 = 2;
// Tells a prefetched snapshot for a state that has since been shut down from a current one.
static GENERATION: AtomicU64 = AtomicU64::new(0);

pub struct Device {
    // The index the socket numbers the device by: the host's, or a scope's 0..n-1.
    pub host_index: u32,
    pub info: DeviceInfo,
    pub cpus: Vec<usize>,
}

impl Device {
    pub fn slowdown_celsius(&self) -> f64 {
        self.info.slowdown_celsius.unwrap_or(DEFAULT_SLOWDOWN_CELSIUS)
    }
    pub fn shutdown_celsius(&self) -> f64 {
        self.info.shutdown_celsius.unwrap_or(DEFAULT_SHUTDOWN_CELSIUS)
    }
    /// The N of the device node `/dev/xpuN`, as NVML's minor number is that of /dev/nvidiaN:
    /// the host's N in a container too.
    pub fn minor_number(&self) -> u32 {
        let name = self.info.device_path.rsplit('/').next().unwrap_or("");
        name.strip_prefix("xpu").and_then(|n| n.parse().ok()).unwrap_or(self.host_index)
    }
    /// Emulated PCI location: domain 0, 32 devices per bus from bus 1.
    pub fn pci_location(&self) -> (u32, u32, u32) {
        (0, 1 + self.host_index / 32, self.host_index % 32)
    }
    pub fn bus_id(&self) -> String {
        let (domain, bus, device) = self.pci_location();
        format!("{domain:08X}:{bus:02X}:{device:02X}.0")
    }
    pub fn bus_id_legacy(&self) -> String {
        let (domain, bus, device) = self.pci_location();
        format!("{domain:04X}:{bus:02X}:{device:02X}.0")
    }
    /// A 13-digit board serial, as NVIDIA's, derived from the UUID so it is as stable.
    pub fn serial(&self) -> String {
        let hex: String = self.info.uuid.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        let n = u64::from_str_radix(hex.get(hex.len().saturating_sub(12)..).unwrap_or("0"), 16).unwrap_or(0);
        format!("{:013}", n % 10_000_000_000_000)
    }
}

struct Snapshot {
    at: Instant,
    data: Arc<Telemetry>,
    // Fetched ahead of a burst and not yet read: its first reader starts a burst.
    prefetched: bool,
}

pub struct State {
    pub driver_version: String,
    pub devices: Vec<Device>,
    conn: Connection,
    ttl: Duration,
    snapshot: Option<Snapshot>,
    cadence: Cadence,
    generation: u64,
    pub prefetcher: Option<Prefetcher>,
}

impl State {
    pub fn open() -> Result<State, Ret> {
        let mut conn = Connection::new(crate::xpud::socket_path());
        let inventory: Inventory = conn.get("/v1/inventory").map_err(|e| match e {
            Error::Unreachable => NVML_ERROR_DRIVER_NOT_LOADED,
            Error::Protocol => NVML_ERROR_LIB_RM_VERSION_MISMATCH,
        })?;
        let numa_nodes = inventory.devices.iter().map(|d| d.numa_node as usize + 1).max();
        let affinity = crate::affinity::CpuSplit::new(numa_nodes.unwrap_or(1));
        let visible = crate::visible::select(&inventory.devices, |name| std::env::var(name).ok());
        let devices = visible
            .into_iter()
            .take(MAX_DEVICES)
            .map(|i| {
                let info = inventory.devices[i].clone();
                Device { host_index: info.index, cpus: affinity.cpus_of(info.numa_node as usize), info }
            })
            .collect();
        let ttl = std::env::var(CACHE_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_CACHE);
        let generation = GENERATION.fetch_add(1, Ordering::SeqCst) + 1;
        let socket = conn.path().to_path_buf();
        let prefetcher = (!ttl.is_zero()).then(|| {
            Prefetcher::start(socket, move |data| {
                if let Some(state) = library().state.as_mut().filter(|s| s.generation == generation) {
                    state.snapshot = Some(Snapshot { at: Instant::now(), data, prefetched: true });
                }
            })
        });
        Ok(State {
            driver_version: inventory.driver_version,
            devices,
            conn,
            ttl,
            snapshot: None,
            cadence: Cadence::default(),
            generation,
            prefetcher,
        })
    }

    pub fn socket(&self) -> &std::path::Path {
        self.conn.path()
    }

    pub fn invalidate(&mut self) {
        self.snapshot = None;
    }

    pub fn telemetry(&mut self) -> Result<Arc<Telemetry>, Ret> {
        let now = Instant::now();
        if let Some(snap) = self.snapshot.as_mut().filter(|s| now.duration_since(s.at) < self.ttl) {
            let data = snap.data.clone();
            if std::mem::take(&mut snap.prefetched) {
                self.burst(now);
            }
            return Ok(data);
        }
        // xpud gone after init: an internal driver error, not a device fault.
        let data: Arc<Telemetry> = Arc::new(self.conn.get("/v1/telemetry").map_err(|_| NVML_ERROR_UNKNOWN)?);
        self.snapshot = Some(Snapshot { at: Instant::now(), data: data.clone(), prefetched: false });
        self.burst(now);
        Ok(data)
    }

    fn burst(&mut self, now: Instant) {
        if let (Some(prefetcher), Some(at)) =
            (&self.prefetcher, self.cadence.burst(now, self.ttl / PREFETCH_LEAD_SHARE))
        {
            prefetcher.schedule(at);
        }
    }

    /// The live reading of visible device `i`; GPU_IS_LOST when xpud reports it lost.
    pub fn reading(&mut self, i: usize) -> Result<(Arc<Telemetry>, usize), Ret> {
        let host = self.devices[i].host_index;
        let snap = self.telemetry()?;
        let pos = snap.devices.iter().position(|d| d.index == host).ok_or(NVML_ERROR_GPU_IS_LOST)?;
        if snap.devices[pos].lost() {
            return Err(NVML_ERROR_GPU_IS_LOST);
        }
        Ok((snap, pos))
    }
}

pub fn with_reading<T>(
    state: &mut State,
    i: usize,
    f: impl FnOnce(&Device, &DeviceTelemetry) -> Result<T, Ret>,
) -> Result<T, Ret> {
    let (snap, pos) = state.reading(i)?;
    f(&state.devices[i], &snap.devices[pos])
}

/// NVML is reference counted: each init needs a shutdown; the last one drops the state.
pub struct Library {
    pub refcount: u32,
    pub state: Option<State>,
}

static LIBRARY: Mutex<Library> = Mutex::new(Library { refcount: 0, state: None });

pub fn library() -> MutexGuard<'static, Library> {
    // A panic while holding the lock was already turned into an error for its caller.
    LIBRARY.lock().unwrap_or_else(|e| e.into_inner())
}
