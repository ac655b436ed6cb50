// gonvml drives NVIDIA's own go-nvml bindings against libnvidia-ml.so.1 for the tests:
//
//	gonvml enumerate            every device's readings as a JSON list
//	gonvml wait-xid INDEX MS    register device INDEX for XID events, print "registered",
//	                            then the first event (or the timeout) as JSON
//
// Any NVML error prints `nvml: <call>: <code> <string>` on stderr and exits 3.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

type device struct {
	Index         int      `json:"index"`
	Minor         int      `json:"minor"`
	UUID          string   `json:"uuid"`
	Name          string   `json:"name"`
	BusID         string   `json:"bus_id"`
	MemoryTotal   uint64   `json:"memory_total"`
	MemoryUsed    uint64   `json:"memory_used"`
	MemoryFree    uint64   `json:"memory_free"`
	Utilization   uint32   `json:"utilization_gpu"`
	TemperatureC  uint32   `json:"temperature"`
	PowerMW       uint32   `json:"power_mw"`
	PowerLimitMW  uint32   `json:"power_limit_mw"`
	EnergyMJ      uint64   `json:"energy_mj"`
	ClockSM       uint32   `json:"clock_sm"`
	MaxClockSM    uint32   `json:"max_clock_sm"`
	ClockMem      uint32   `json:"clock_mem"`
	EccCorrected  uint64   `json:"ecc_corrected"`
	NumaNode      int      `json:"numa_node"`
	ProcessPids   []uint32 `json:"process_pids"`
	MigSupported  bool     `json:"mig_supported"`
	TopologyToDev []int    `json:"topology"`
}

func check(ret nvml.Return, call string) {
	if ret != nvml.SUCCESS {
		fmt.Fprintf(os.Stderr, "nvml: %s: %d %s\n", call, int(ret), nvml.ErrorString(ret))
		os.Exit(3)
	}
}

func cString(chars [32]int8) string {
	out := make([]byte, 0, len(chars))
	for _, c := range chars {
		if c == 0 {
			break
		}
		out = append(out, byte(c))
	}
	return string(out)
}

func enumerate() []device {
	count, ret := nvml.DeviceGetCount()
	check(ret, "DeviceGetCount")
	handles := make([]nvml.Device, count)
	for i := range handles {
		handles[i], ret = nvml.DeviceGetHandleByIndex(i)
		check(ret, "DeviceGetHandleByIndex")
	}
	devices := make([]device, 0, count)
	for i, h := range handles {
		var d device
		d.Index, ret = h.GetIndex()
		check(ret, "GetIndex")
		d.Minor, ret = h.GetMinorNumber()
		check(ret, "GetMinorNumber")
		d.UUID, ret = h.GetUUID()
		check(ret, "GetUUID")
		byUUID, ret := nvml.DeviceGetHandleByUUID(d.UUID)
		check(ret, "DeviceGetHandleByUUID")
		if idx, _ := byUUID.GetIndex(); idx != i {
			fmt.Fprintf(os.Stderr, "handle by UUID %s is device %d, not %d\n", d.UUID, idx, i)
			os.Exit(4)
		}
		d.Name, ret = h.GetName()
		check(ret, "GetName")
		pci, ret := h.GetPciInfo()
		check(ret, "GetPciInfo")
		d.BusID = cString(pci.BusId)
		mem, ret := h.GetMemoryInfo()
		check(ret, "GetMemoryInfo")
		d.MemoryTotal, d.MemoryUsed, d.MemoryFree = mem.Total, mem.Used, mem.Free
		util, ret := h.GetUtilizationRates()
		check(ret, "GetUtilizationRates")
		d.Utilization = util.Gpu
		d.TemperatureC, ret = h.GetTemperature(nvml.TEMPERATURE_GPU)
		check(ret, "GetTemperature")
		d.PowerMW, ret = h.GetPowerUsage()
		check(ret, "GetPowerUsage")
		d.PowerLimitMW, ret = h.GetEnforcedPowerLimit()
		check(ret, "GetEnforcedPowerLimit")
		d.EnergyMJ, ret = h.GetTotalEnergyConsumption()
		check(ret, "GetTotalEnergyConsumption")
		d.ClockSM, ret = h.GetClockInfo(nvml.CLOCK_SM)
		check(ret, "GetClockInfo")
		d.MaxClockSM, ret = h.GetMaxClockInfo(nvml.CLOCK_SM)
		check(ret, "GetMaxClockInfo")
		d.ClockMem, ret = h.GetClockInfo(nvml.CLOCK_MEM)
		check(ret, "GetClockInfo(MEM)")
		d.EccCorrected, ret = h.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_CORRECTED, nvml.AGGREGATE_ECC)
		check(ret, "GetTotalEccErrors")
		d.NumaNode, ret = h.GetNumaNodeId()
		check(ret, "GetNumaNodeId")
		procs, ret := h.GetComputeRunningProcesses()
		check(ret, "GetComputeRunningProcesses")
		d.ProcessPids = []uint32{}
		for _, p := range procs {
			d.ProcessPids = append(d.ProcessPids, p.Pid)
		}
		_, _, ret = h.GetMigMode()
		d.MigSupported = ret != nvml.ERROR_NOT_SUPPORTED
		for _, other := range handles {
			level, ret := h.GetTopologyCommonAncestor(other)
			check(ret, "GetTopologyCommonAncestor")
			d.TopologyToDev = append(d.TopologyToDev, int(level))
		}
		devices = append(devices, d)
	}
	return devices
}

func waitXid(index int, timeoutMs uint32) map[string]any {
	h, ret := nvml.DeviceGetHandleByIndex(index)
	check(ret, "DeviceGetHandleByIndex")
	set, ret := nvml.EventSetCreate()
	check(ret, "EventSetCreate")
	defer set.Free()
	check(h.RegisterEvents(nvml.EventTypeXidCriticalError, set), "RegisterEvents")
	fmt.Println("registered")
	data, ret := set.Wait(timeoutMs)
	if ret == nvml.ERROR_TIMEOUT {
		return map[string]any{"timeout": true}
	}
	check(ret, "EventSetWait")
	from, ret := data.Device.GetIndex()
	check(ret, "GetIndex(event device)")
	return map[string]any{"device": from, "event_type": data.EventType, "xid": data.EventData}
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: gonvml enumerate | wait-xid INDEX TIMEOUT_MS")
		os.Exit(2)
	}
	check(nvml.Init(), "Init")
	defer nvml.Shutdown()
	var out any
	switch os.Args[1] {
	case "enumerate":
		out = enumerate()
	case "wait-xid":
		index, err1 := strconv.Atoi(os.Args[2])
		timeout, err2 := strconv.ParseUint(os.Args[3], 10, 32)
		if err1 != nil || err2 != nil {
			fmt.Fprintln(os.Stderr, "wait-xid: INDEX and TIMEOUT_MS are numbers")
			os.Exit(2)
		}
		out = waitXid(index, uint32(timeout))
	default:
		fmt.Fprintf(os.Stderr, "unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		os.Exit(1)
	}
}
