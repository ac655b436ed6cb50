//! NVML event sets fed by xpud's event stream: a fault arrives as an XID event whose data
//! is the fault code (our codes are XID numbers), plus the ECC event NVML raises beside it.
//!
//! One background thread per process reads the stream while any set exists; waiting on a
//! set blocks only on that set.

use crate::ret::*;
use crate::xpud::{Error, EventStream};
use std::collections::{HashMap, VecDeque};
use std::ffi::c_void;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

pub const EVENT_SINGLE_BIT_ECC: u64 = 0x1;
pub const EVENT_DOUBLE_BIT_ECC: u64 = 0x2;
pub const EVENT_XID_CRITICAL: u64 = 0x8;
pub const SUPPORTED_EVENTS: u64 = EVENT_SINGLE_BIT_ECC | EVENT_DOUBLE_BIT_ECC | EVENT_XID_CRITICAL;
// gpuInstanceId / computeInstanceId when MIG is not in use.
const NO_INSTANCE: u32 = 0xFFFF_FFFF;
const RECONNECT_PAUSE: Duration = Duration::from_millis(250);
// Per set: a reader that never waits must not grow the process without bound.
const QUEUE_LIMIT: usize = 4096;

/// nvmlEventData_t (the v2 layout; v1 is its first three fields).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EventData {
    pub device: *mut c_void,
    pub event_type: u64,
    pub event_data: u64,
    pub gpu_instance_id: u32,
    pub compute_instance_id: u32,
}

#[repr(C)]
pub struct EventDataV1 {
    pub device: *mut c_void,
    pub event_type: u64,
    pub event_data: u64,
}

struct Queued {
    handle: usize,
    event_type: u64,
    data: u64,
}

#[derive(Default)]
pub struct EventSet {
    queue: Mutex<VecDeque<Queued>>,
    ready: Condvar,
    // host device index -> (registered event mask, the caller's device handle)
    registered: Mutex<HashMap<u32, (u64, usize)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The NVML events one xpud fault raises, as (event type, event data).
pub fn events_for_fault(code: u64) -> Vec<(u64, u64)> {
    let mut events = vec![(EVENT_XID_CRITICAL, code)];
    match code {
        63 => events.push((EVENT_SINGLE_BIT_ECC, 0)),
        48 | 94 | 95 => events.push((EVENT_DOUBLE_BIT_ECC, 0)),
        _ => {}
    }
    events
}

struct Stream {
    stop: Arc<AtomicBool>,
    control: Arc<Mutex<UnixStream>>,
    thread: JoinHandle<()>,
}

#[derive(Default)]
struct Registry {
    sets: Vec<Arc<EventSet>>,
    stream: Option<Stream>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry { sets: Vec::new(), stream: None });

pub fn create() -> *mut c_void {
    let set = Arc::new(EventSet::default());
    let ptr = Arc::as_ptr(&set) as *mut c_void;
    lock(&REGISTRY).sets.push(set);
    ptr
}

pub fn find(ptr: *mut c_void) -> Option<Arc<EventSet>> {
    lock(&REGISTRY).sets.iter().find(|s| Arc::as_ptr(s) as *mut c_void == ptr).cloned()
}

pub fn free(ptr: *mut c_void) -> Ret {
    let mut registry = lock(&REGISTRY);
    let before = registry.sets.len();
    registry.sets.retain(|s| Arc::as_ptr(s) as *mut c_void != ptr);
    if registry.sets.len() == before {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    let stream = if registry.sets.is_empty() { registry.stream.take() } else { None };
    drop(registry);
    stop(stream);
    NVML_SUCCESS
}

/// On the last nvmlShutdown: every set goes, and the stream with them.
pub fn free_all() {
    let stream = {
        let mut registry = lock(&REGISTRY);
        registry.sets.clear();
        registry.stream.take()
    };
    stop(stream);
}

fn stop(stream: Option<Stream>) {
    if let Some(s) = stream {
        s.stop.store(true, Ordering::SeqCst);
        let _ = lock(&s.control).shutdown(std::net::Shutdown::Both);
        // Joined, so a caller that unloads the library never leaves our thread running in it.
        let _ = s.thread.join();
    }
}

pub fn register(set: &EventSet, host: u32, handle: *mut c_void, mask: u64, socket: &Path) -> Ret {
    let mut registry = lock(&REGISTRY);
    let running = registry.stream.as_ref().is_some_and(|s| !s.thread.is_finished());
    if !running {
        // Subscribed before we return: a fault injected right after registration is seen.
        let Ok((stream, control)) = EventStream::open(socket) else {
            return NVML_ERROR_UNKNOWN;
        };
        let stop = Arc::new(AtomicBool::new(false));
        let control = Arc::new(Mutex::new(control));
        let (flag, ctl, path) = (stop.clone(), control.clone(), socket.to_path_buf());
        let Ok(thread) = std::thread::Builder::new()
            .name("nvml-events".into())
            .spawn(move || follow(stream, flag, ctl, path))
        else {
            return NVML_ERROR_UNKNOWN;
        };
        registry.stream = Some(Stream { stop, control, thread });
    }
    drop(registry);
    let mut registered = lock(&set.registered);
    let entry = registered.entry(host).or_insert((0, handle as usize));
    entry.0 |= mask;
    NVML_SUCCESS
}

fn follow(mut stream: EventStream, stop: Arc<AtomicBool>, control: Arc<Mutex<UnixStream>>, path: PathBuf) {
    while !stop.load(Ordering::SeqCst) {
        match stream.next() {
            Ok(event) => {
                if event.kind == "fault" {
                    if let Some(code) = event.code {
                        dispatch(event.device_index, code);
                    }
                }
            }
            Err(Error::Unreachable | Error::Protocol) => {
                // xpud restarted or went away: keep trying until it is back or we are told to stop.
                loop {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    std::thread::sleep(RECONNECT_PAUSE);
                    if let Ok((fresh, ctl)) = EventStream::open(&path) {
                        *lock(&control) = ctl;
                        stream = fresh;
                        break;
                    }
                }
            }
        }
    }
}

fn dispatch(host: u32, code: u64) {
    let sets = lock(&REGISTRY).sets.clone();
    for set in sets {
        let Some(&(mask, handle)) = lock(&set.registered).get(&host) else { continue };
        let mut queue = lock(&set.queue);
        for (event_type, data) in events_for_fault(code) {
            if mask & event_type != 0 && queue.len() < QUEUE_LIMIT {
                queue.push_back(Queued { handle, event_type, data });
            }
        }
        drop(queue);
        set.ready.notify_all();
    }
    // A fault changes readings (health, ECC counts): the next query must not see the old ones.
    if let Some(state) = crate::state::library().state.as_mut() {
        state.invalidate();
    }
}

pub fn wait(set: &EventSet, timeout_ms: u32) -> Result<EventData, Ret> {
    let queue = lock(&set.queue);
    let (mut queue, _) = set
        .ready
        .wait_timeout_while(queue, Duration::from_millis(timeout_ms.into()), |q| q.is_empty())
        .unwrap_or_else(|e| e.into_inner());
    let q = queue.pop_front().ok_or(NVML_ERROR_TIMEOUT)?;
    Ok(EventData {
        device: q.handle as *mut c_void,
        event_type: q.event_type,
        event_data: q.data,
        gpu_instance_id: NO_INSTANCE,
        compute_instance_id: NO_INSTANCE,
    })
}
