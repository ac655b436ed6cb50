//! CPU affinity of an emulated NUMA node: the host's own node when the host has that many,
//! else the online CPUs split into as many equal runs as the profile has NUMA nodes.

use std::fs;

pub struct CpuSplit {
    nodes: Vec<Vec<usize>>,
}

fn parse_list(text: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(lo), Ok(hi)) = (lo.trim().parse::<usize>(), hi.trim().parse::<usize>()) {
            cpus.extend(lo..=hi.min(lo + 65_536));
        }
    }
    cpus
}

impl CpuSplit {
    pub fn new(emulated_nodes: usize) -> CpuSplit {
        let host: Vec<Vec<usize>> = (0..emulated_nodes)
            .map_while(|n| fs::read_to_string(format!("/sys/devices/system/node/node{n}/cpulist")).ok())
            .map(|t| parse_list(&t))
            .collect();
        if host.len() == emulated_nodes && host.iter().all(|c| !c.is_empty()) {
            return CpuSplit { nodes: host };
        }
        let online =
            fs::read_to_string("/sys/devices/system/cpu/online").map(|t| parse_list(&t)).unwrap_or_default();
        let online = if online.is_empty() { vec![0] } else { online };
        let per = online.len().div_ceil(emulated_nodes).max(1);
        let nodes = (0..emulated_nodes)
            .map(|n| {
                let run: Vec<usize> = online.iter().copied().skip(n * per).take(per).collect();
                // More emulated nodes than CPUs: a node shares the last CPU rather than none.
                if run.is_empty() {
                    vec![*online.last().unwrap_or(&0)]
                } else {
                    run
                }
            })
            .collect();
        CpuSplit { nodes }
    }

    pub fn cpus_of(&self, node: usize) -> Vec<usize> {
        self.nodes.get(node).cloned().unwrap_or_default()
    }
}
