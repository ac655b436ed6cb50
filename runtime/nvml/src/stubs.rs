//! Entry points that tools probe and an XPU cannot answer: NOT_SUPPORTED, as NVML answers
//! on a GPU without the feature (UNINITIALIZED before init). Their arguments are never
//! read, so one argument-less definition serves every signature under the C calling
//! convention, where the caller owns the arguments.

use crate::ret::*;

fn not_supported() -> Ret {
    if crate::state::library().state.is_some() {
        NVML_ERROR_NOT_SUPPORTED
    } else {
        NVML_ERROR_UNINITIALIZED
    }
}

macro_rules! not_supported {
    ($($name:ident)*) => {$(
        #[no_mangle]
        pub extern "C" fn $name() -> Ret {
            std::panic::catch_unwind(not_supported).unwrap_or(NVML_ERROR_UNKNOWN)
        }
    )*};
}

not_supported! {
    // identity and firmware
    nvmlDeviceGetVbiosVersion nvmlDeviceGetInforomVersion nvmlDeviceGetInforomImageVersion
    nvmlDeviceGetInforomConfigurationChecksum nvmlDeviceGetBoardPartNumber nvmlDeviceGetBoardId
    nvmlDeviceGetMultiGpuBoard nvmlDeviceGetCudaComputeCapability nvmlDeviceGetAttributes
    nvmlDeviceGetAttributes_v2 nvmlDeviceGetHandleByUUIDV nvmlDeviceGetPciInfoExt
    nvmlDeviceGetModuleId nvmlDeviceGetPlatformInfo nvmlDeviceGetPdi nvmlDeviceGetBusType
    nvmlDeviceGetGspFirmwareMode nvmlDeviceGetGspFirmwareVersion nvmlDeviceGetDriverModel
    nvmlDeviceGetDriverModel_v2 nvmlDeviceGetNumGpuCores nvmlDeviceGetMemoryBusWidth
    nvmlDeviceGetIrqNum nvmlDeviceGetBridgeChipInfo nvmlDeviceGetCapabilities
    nvmlDeviceGetAddressingMode nvmlDeviceGetRepairStatus nvmlSystemGetHicVersion
    nvmlDeviceGetDramEncryptionMode nvmlDeviceGetC2cModeInfoV
    // PCIe
    nvmlDeviceGetPcieThroughput nvmlDeviceGetPcieReplayCounter nvmlDeviceGetCurrPcieLinkGeneration
    nvmlDeviceGetCurrPcieLinkWidth nvmlDeviceGetMaxPcieLinkGeneration nvmlDeviceGetMaxPcieLinkWidth
    nvmlDeviceGetGpuMaxPcieLinkGeneration nvmlDeviceGetPcieSpeed nvmlDeviceGetPcieLinkMaxSpeed
    nvmlDeviceGetP2PStatus nvmlDeviceOnSameBoard nvmlSystemGetTopologyGpuSet
    // media engines
    nvmlDeviceGetEncoderUtilization nvmlDeviceGetDecoderUtilization nvmlDeviceGetJpgUtilization
    nvmlDeviceGetOfaUtilization nvmlDeviceGetEncoderCapacity nvmlDeviceGetEncoderStats
    nvmlDeviceGetEncoderSessions nvmlDeviceGetFBCStats nvmlDeviceGetFBCSessions
    // memory health
    nvmlDeviceGetRetiredPages nvmlDeviceGetRetiredPages_v2 nvmlDeviceGetRetiredPagesPendingStatus
    nvmlDeviceGetRemappedRows nvmlDeviceGetRowRemapperHistogram nvmlDeviceGetDetailedEccErrors
    nvmlDeviceGetDefaultEccMode nvmlDeviceGetSramEccErrorStatus
    // accounting and sampling
    nvmlDeviceGetAccountingMode nvmlDeviceGetAccountingStats nvmlDeviceGetAccountingPids
    nvmlDeviceGetAccountingBufferSize nvmlDeviceGetProcessUtilization
    nvmlDeviceGetProcessesUtilizationInfo nvmlDeviceGetRunningProcessDetailList nvmlDeviceGetSamples
    nvmlDeviceGetFieldValues nvmlDeviceClearFieldValues nvmlDeviceGetViolationStatus
    nvmlDeviceGetLastBBXFlushTime nvmlGpmQueryDeviceSupport nvmlGpmQueryIfStreamingEnabled
    // clocks, power and cooling controls
    nvmlDeviceGetAutoBoostedClocksEnabled nvmlDeviceGetSupportedMemoryClocks
    nvmlDeviceGetSupportedGraphicsClocks nvmlDeviceGetClockOffsets nvmlDeviceGetCurrentClockFreqs
    nvmlDeviceGetPerformanceModes nvmlDeviceGetAdaptiveClockInfoStatus
    nvmlDeviceGetSupportedPerformanceStates nvmlDeviceGetDynamicPstatesInfo
    nvmlDeviceGetMemClkMinMaxVfOffset nvmlDeviceGetGpcClkMinMaxVfOffset nvmlDeviceGetMinMaxClockOfPState
    nvmlDeviceGetPowerSource nvmlDeviceGetPowerMizerMode_v1 nvmlDeviceGetMarginTemperature
    nvmlDeviceGetTargetFanSpeed nvmlDeviceGetFanSpeedRPM nvmlDeviceGetFanControlPolicy_v2
    nvmlDeviceGetMinMaxFanSpeed nvmlDeviceGetCoolerInfo nvmlDeviceGetThermalSettings
    nvmlDeviceGetGpuOperationMode
    // MIG, NVLink, fabric, virtualization, confidential computing
    nvmlDeviceGetMaxMigDeviceCount nvmlDeviceGetMigDeviceHandleByIndex
    nvmlDeviceGetDeviceHandleFromMigDeviceHandle nvmlDeviceGetGpuInstanceId
    nvmlDeviceGetComputeInstanceId nvmlDeviceGetGpuInstances nvmlDeviceGetGpuInstanceProfileInfo
    nvmlDeviceGetGpuInstanceProfileInfoV nvmlDeviceGetGpuInstancePossiblePlacements_v2
    nvmlDeviceGetNvLinkState nvmlDeviceGetNvLinkVersion nvmlDeviceGetNvLinkCapability
    nvmlDeviceGetNvLinkRemotePciInfo_v2 nvmlDeviceGetNvLinkRemoteDeviceType
    nvmlDeviceGetNvLinkErrorCounter nvmlDeviceGetNvLinkUtilizationCounter nvmlDeviceGetNvlinkBwMode
    nvmlDeviceGetNvlinkSupportedBwModes nvmlSystemGetNvlinkBwMode nvmlDeviceGetGpuFabricInfo
    nvmlDeviceGetGpuFabricInfoV nvmlDeviceGetVirtualizationMode nvmlDeviceGetHostVgpuMode
    nvmlDeviceGetGridLicensableFeatures_v4 nvmlDeviceGetSupportedVgpus nvmlDeviceGetCreatableVgpus
    nvmlDeviceGetActiveVgpus nvmlDeviceGetVgpuUtilization nvmlDeviceGetVgpuProcessUtilization
    nvmlDeviceGetVgpuCapabilities nvmlDeviceGetPgpuMetadataString nvmlDeviceGetConfComputeMemSizeInfo
    nvmlDeviceGetConfComputeProtectedMemoryUsage nvmlDeviceGetConfComputeGpuCertificate
    nvmlSystemGetConfComputeState nvmlSystemGetConfComputeCapabilities
    nvmlSystemGetConfComputeSettings
    // settings: nothing on an emulated device is the caller's to change
    nvmlDeviceSetPersistenceMode nvmlDeviceSetComputeMode nvmlDeviceSetEccMode
    nvmlDeviceClearEccErrorCounts nvmlDeviceSetPowerManagementLimit nvmlDeviceSetPowerManagementLimit_v2
    nvmlDeviceSetApplicationsClocks nvmlDeviceResetApplicationsClocks nvmlDeviceSetGpuLockedClocks
    nvmlDeviceResetGpuLockedClocks nvmlDeviceSetMemoryLockedClocks nvmlDeviceResetMemoryLockedClocks
    nvmlDeviceSetMigMode nvmlDeviceSetAccountingMode nvmlDeviceClearAccountingPids
    nvmlDeviceSetTemperatureThreshold nvmlDeviceSetFanSpeed_v2 nvmlDeviceSetDefaultFanSpeed_v2
    nvmlDeviceSetAutoBoostedClocksEnabled nvmlDeviceSetCpuAffinity nvmlDeviceClearCpuAffinity
    nvmlDeviceSetGpuOperationMode nvmlDeviceSetClockOffsets nvmlDeviceResetGpuLockedClocks_v2
}
