//! Which devices a process sees, the way NVIDIA's container stack decides it.
//!
//! `XPU_VISIBLE_DEVICES` (set by the device plugin) or else `NVIDIA_VISIBLE_DEVICES`
//! names the container's devices by host index or UUID (`all`, `none`, `void` as NVIDIA's);
//! `CUDA_VISIBLE_DEVICES` then narrows that set by position or UUID, CUDA's way: the list
//! ends at the first entry that names no device. Visible devices are numbered from 0 in
//! the order named.

use crate::xpud::DeviceInfo;

pub const CONTAINER_ENVS: [&str; 2] = ["XPU_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"];
pub const CUDA_ENV: &str = "CUDA_VISIBLE_DEVICES";

/// Positions in `devices` of the visible devices, in visible order.
pub fn select(devices: &[DeviceInfo], env: impl Fn(&str) -> Option<String>) -> Vec<usize> {
    let container = CONTAINER_ENVS.iter().find_map(|name| env(name));
    let mut chosen = match container.as_deref().map(str::trim) {
        None | Some("all") => (0..devices.len()).collect(),
        Some("" | "none" | "void") => Vec::new(),
        Some(list) => {
            let mut chosen: Vec<usize> = Vec::new();
            for entry in list.split(',').map(str::trim) {
                // Shared replicas arrive as `<uuid>::<n>`: a slice of the whole device.
                let name = entry.split("::").next().unwrap_or("");
                let found = devices
                    .iter()
                    .position(|d| d.uuid.eq_ignore_ascii_case(name) || d.index.to_string() == name);
                // An unknown name shows nothing rather than the wrong device.
                if let Some(pos) = found.filter(|p| !chosen.contains(p)) {
                    chosen.push(pos);
                }
            }
            chosen
        }
    };
    if let Some(cuda) = env(CUDA_ENV) {
        let mut narrowed: Vec<usize> = Vec::new();
        for entry in cuda.split(',').map(str::trim) {
            let found = match entry.parse::<usize>() {
                Ok(n) => chosen.get(n).copied(),
                // CUDA accepts any unique UUID prefix.
                Err(_) if !entry.is_empty() => {
                    let matches: Vec<usize> =
                        chosen.iter().copied().filter(|&p| devices[p].uuid.starts_with(entry)).collect();
                    (matches.len() == 1).then(|| matches[0])
                }
                Err(_) => None,
            };
            match found {
                Some(p) if !narrowed.contains(&p) => narrowed.push(p),
                _ => break,
            }
        }
        chosen = narrowed;
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devices() -> Vec<DeviceInfo> {
        (0..4)
            .map(|i| DeviceInfo {
                index: i,
                uuid: format!("XPU-{i}{i}{i}{i}-aaaa"),
                product: "X".into(),
                family: "x1".into(),
                max_clock_mhz: 1,
                link_group: 0,
                numa_node: 0,
                device_path: format!("/dev/xpu{i}"),
                slowdown_celsius: None,
                shutdown_celsius: None,
            })
            .collect()
    }

    fn view(vars: &[(&str, &str)]) -> Vec<usize> {
        select(&devices(), |name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn container_variables_name_devices_by_index_or_uuid() {
        assert_eq!(view(&[]), [0, 1, 2, 3]);
        assert_eq!(view(&[("XPU_VISIBLE_DEVICES", "XPU-3333-aaaa::2, 1,1")]), [3, 1]);
        assert_eq!(view(&[("XPU_VISIBLE_DEVICES", "void")]), Vec::<usize>::new());
        assert_eq!(view(&[("NVIDIA_VISIBLE_DEVICES", "2,9")]), [2]);
        assert_eq!(view(&[("XPU_VISIBLE_DEVICES", "0"), ("NVIDIA_VISIBLE_DEVICES", "2")]), [0]);
    }

    #[test]
    fn cuda_narrows_by_position_and_stops_at_the_first_bad_entry() {
        assert_eq!(view(&[("XPU_VISIBLE_DEVICES", "3,2,1"), ("CUDA_VISIBLE_DEVICES", "2,0")]), [1, 3]);
        assert_eq!(view(&[("CUDA_VISIBLE_DEVICES", "1,7,0")]), [1]);
        assert_eq!(view(&[("CUDA_VISIBLE_DEVICES", "XPU-2")]), [2]);
        assert_eq!(view(&[("CUDA_VISIBLE_DEVICES", "XPU-")]), Vec::<usize>::new()); // ambiguous
        assert_eq!(view(&[("CUDA_VISIBLE_DEVICES", "")]), Vec::<usize>::new());
    }
}
