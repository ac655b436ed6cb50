//! The xpud side: its wire models (the subset NVML needs) and HTTP/1.1 over its unix socket.
//!
//! Hand-written rather than an HTTP crate: the library makes two kinds of request (a GET
//! answered with a Content-Length body, and the chunked event stream), and a dependency
//! tree with an async runtime would be most of the library's size and load time.

use serde::Deserialize;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_SOCKET: &str = "/run/openxpu/xpud.sock";
pub const SOCKET_ENV: &str = "XPUD_SOCKET";
// The socket is local: a daemon slower than this is hung, not busy.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
// xpud sends a keepalive line every 10 s; silence for this long means the daemon is gone.
const STREAM_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_BODY: usize = 64 << 20;

#[derive(Deserialize, Clone, Debug)]
pub struct DeviceInfo {
    pub index: u32,
    pub uuid: String,
    pub product: String,
    pub family: String,
    pub max_clock_mhz: u32,
    pub link_group: u32,
    pub numa_node: u32,
    // The host's /dev/xpuN, also through a scope socket (where `index` is the scope's).
    #[serde(default)]
    pub device_path: String,
    // Not in API v1 yet; until xpud reports them the profile defaults apply.
    #[serde(default)]
    pub slowdown_celsius: Option<f64>,
    #[serde(default)]
    pub shutdown_celsius: Option<f64>,
}

#[derive(Deserialize, Debug)]
pub struct Inventory {
    pub driver_version: String,
    pub devices: Vec<DeviceInfo>,
}

#[derive(Deserialize, Clone, Debug)]
pub struct Process {
    pub pid: u32,
    pub name: String,
    pub memory_used_bytes: u64,
}

#[derive(Deserialize, Clone, Debug)]
pub struct DeviceTelemetry {
    pub index: u32,
    pub health: String,
    pub utilization_ratio: f64,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    pub memory_free_bytes: u64,
    /// None while the device is lost: xpud has no reading then.
    pub temperature_celsius: Option<f64>,
    pub power_watts: f64,
    pub power_limit_watts: f64,
    pub energy_joules: f64,
    pub clock_mhz: f64,
    pub memory_clock_mhz: u32,
    pub throttle_reasons: Vec<String>,
    pub ecc_corrected_total: u64,
    pub ecc_uncorrected_total: u64,
    pub processes: Vec<Process>,
}

impl DeviceTelemetry {
    pub fn lost(&self) -> bool {
        self.health == "Lost"
    }
}

#[derive(Deserialize, Debug)]
pub struct Telemetry {
    pub devices: Vec<DeviceTelemetry>,
}

#[derive(Deserialize, Debug)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: String,
    pub device_index: u32,
    #[serde(default)]
    pub code: Option<u64>,
}

#[derive(Debug)]
pub enum Error {
    /// Nothing answers on the socket: the driver is not loaded.
    Unreachable,
    /// xpud answered, but not with what we asked for.
    Protocol,
}

impl From<io::Error> for Error {
    fn from(_: io::Error) -> Self {
        Error::Protocol
    }
}

impl From<serde_json::Error> for Error {
    fn from(_: serde_json::Error) -> Self {
        Error::Protocol
    }
}

pub fn socket_path() -> PathBuf {
    std::env::var_os(SOCKET_ENV)
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

fn connect(path: &Path, read_timeout: Duration) -> Result<UnixStream, Error> {
    let stream = UnixStream::connect(path).map_err(|_| Error::Unreachable)?;
    stream.set_read_timeout(Some(read_timeout))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

fn send_get(stream: &mut UnixStream, target: &str) -> Result<(), Error> {
    let request = format!("GET {target} HTTP/1.1\r\nHost: xpud\r\nAccept: application/json\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    Ok(())
}

struct Head {
    status: u16,
    length: Option<usize>,
    chunked: bool,
    close: bool,
}

fn read_head(reader: &mut impl BufRead) -> Result<Head, Error> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(Error::Protocol); // closed: the caller may retry on a fresh connection
    }
    let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or(Error::Protocol)?;
    let mut head = Head { status, length: None, chunked: false, close: false };
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(Error::Protocol);
        }
        let line = line.trim_end();
        if line.is_empty() {
            return Ok(head);
        }
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => head.length = Some(value.parse().map_err(|_| Error::Protocol)?),
            "transfer-encoding" => head.chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => head.close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
}

/// One chunk of a chunked body; None at the last (empty) chunk.
fn read_chunk(reader: &mut impl BufRead) -> Result<Option<Vec<u8>>, Error> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(Error::Protocol);
    }
    let size_text = line.trim().split(';').next().unwrap_or("");
    let size = usize::from_str_radix(size_text, 16).map_err(|_| Error::Protocol)?;
    if size > MAX_BODY {
        return Err(Error::Protocol);
    }
    let mut data = vec![0; size + 2]; // the chunk and its CRLF
    reader.read_exact(&mut data)?;
    data.truncate(size);
    // The last chunk is empty; its trailer section is empty too, so the CRLF read with it ends the body.
    Ok((size > 0).then_some(data))
}

/// A kept-alive connection for GET requests: one connect per daemon keep-alive period
/// rather than one per query.
pub struct Connection {
    path: PathBuf,
    reader: Option<BufReader<UnixStream>>,
}

impl Connection {
    pub fn new(path: PathBuf) -> Self {
        Connection { path, reader: None }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get<T: for<'de> Deserialize<'de>>(&mut self, target: &str) -> Result<T, Error> {
        let reused = self.reader.is_some();
        let body = match self.try_get(target) {
            // The daemon may have closed an idle kept-alive connection: GET is safe to repeat.
            Err(Error::Protocol) if reused => self.try_get(target)?,
            other => other?,
        };
        Ok(serde_json::from_slice(&body)?)
    }

    fn try_get(&mut self, target: &str) -> Result<Vec<u8>, Error> {
        if self.reader.is_none() {
            self.reader = Some(BufReader::new(connect(&self.path, IO_TIMEOUT)?));
        }
        let result = self.exchange(target);
        if !matches!(result, Ok((_, true))) {
            self.reader = None; // unknown state or closing: never reuse it
        }
        result.map(|(body, _)| body)
    }

    /// The body, and whether the connection may be reused.
    fn exchange(&mut self, target: &str) -> Result<(Vec<u8>, bool), Error> {
        let reader = self.reader.as_mut().ok_or(Error::Protocol)?;
        send_get(reader.get_mut(), target)?;
        let head = read_head(reader)?;
        let mut body = Vec::new();
        if head.chunked {
            while let Some(chunk) = read_chunk(reader)? {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_BODY {
                    return Err(Error::Protocol);
                }
            }
        } else if let Some(length) = head.length {
            if length > MAX_BODY {
                return Err(Error::Protocol);
            }
            body.resize(length, 0);
            reader.read_exact(&mut body)?;
        } else {
            reader.take(MAX_BODY as u64).read_to_end(&mut body)?;
            return Ok((body, false));
        }
        if head.status != 200 {
            return Err(Error::Protocol);
        }
        Ok((body, !head.close))
    }
}

/// The health-event stream, subscribed: xpud registers the listener before it answers,
/// so every event after `open` returns is delivered.
pub struct EventStream {
    reader: BufReader<UnixStream>,
    pending: Vec<u8>,
}

impl EventStream {
    pub fn open(path: &Path) -> Result<(EventStream, UnixStream), Error> {
        let mut stream = connect(path, STREAM_TIMEOUT)?;
        send_get(&mut stream, "/v1/events")?;
        let control = stream.try_clone()?;
        let mut reader = BufReader::new(stream);
        let head = read_head(&mut reader)?;
        if head.status != 200 || !head.chunked {
            return Err(Error::Protocol);
        }
        Ok((EventStream { reader, pending: Vec::new() }, control))
    }

    /// The next event; Err when the stream ends or breaks.
    pub fn next(&mut self) -> Result<Event, Error> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                let text = line.trim_ascii();
                if text.is_empty() {
                    continue; // keepalive
                }
                match serde_json::from_slice::<Event>(text) {
                    Ok(event) => return Ok(event),
                    Err(_) => continue, // a line of a newer API we do not know: skip it
                }
            }
            match read_chunk(&mut self.reader)? {
                Some(chunk) => self.pending.extend_from_slice(&chunk),
                None => return Err(Error::Protocol),
            }
            if self.pending.len() > MAX_BODY {
                return Err(Error::Protocol);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_and_heads_parse() {
        let wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
                     5;x=y\r\nhello\r\n1\r\n!\r\n0\r\n\r\n";
        let mut reader = &wire[..];
        let head = read_head(&mut reader).unwrap();
        assert!(head.status == 200 && head.chunked && head.close && head.length.is_none());
        assert_eq!(read_chunk(&mut reader).unwrap().unwrap(), b"hello");
        assert_eq!(read_chunk(&mut reader).unwrap().unwrap(), b"!");
        assert!(read_chunk(&mut reader).unwrap().is_none());
        assert!(reader.is_empty());
        assert!(read_chunk(&mut &b"zz\r\n"[..]).is_err());
        assert!(read_head(&mut &b""[..]).is_err());
    }
}
