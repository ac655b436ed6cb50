//! nvmlReturn_t and its strings, as nvml.h defines them.

use std::ffi::c_char;

pub type Ret = i32;

pub const NVML_SUCCESS: Ret = 0;
pub const NVML_ERROR_UNINITIALIZED: Ret = 1;
pub const NVML_ERROR_INVALID_ARGUMENT: Ret = 2;
pub const NVML_ERROR_NOT_SUPPORTED: Ret = 3;
pub const NVML_ERROR_NOT_FOUND: Ret = 6;
pub const NVML_ERROR_INSUFFICIENT_SIZE: Ret = 7;
pub const NVML_ERROR_DRIVER_NOT_LOADED: Ret = 9;
pub const NVML_ERROR_TIMEOUT: Ret = 10;
pub const NVML_ERROR_GPU_IS_LOST: Ret = 15;
pub const NVML_ERROR_LIB_RM_VERSION_MISMATCH: Ret = 18;
pub const NVML_ERROR_ARGUMENT_VERSION_MISMATCH: Ret = 25;
pub const NVML_ERROR_UNKNOWN: Ret = 999;

/// NVML's own wording, so logs read the same as on NVIDIA hardware.
pub fn error_string(code: Ret) -> *const c_char {
    let text: &'static [u8] = match code {
        0 => b"Success\0",
        1 => b"Uninitialized\0",
        2 => b"Invalid Argument\0",
        3 => b"Not Supported\0",
        4 => b"Insufficient Permissions\0",
        5 => b"Already Initialized\0",
        6 => b"Not Found\0",
        7 => b"Insufficient Size\0",
        8 => b"Insufficient External Power\0",
        9 => b"Driver Not Loaded\0",
        10 => b"Timeout\0",
        11 => b"Interrupt Request Issue\0",
        12 => b"NVML Shared Library Not Found\0",
        13 => b"Function Not Found\0",
        14 => b"Corrupted infoROM\0",
        15 => b"GPU is lost\0",
        16 => b"GPU requires restart\0",
        17 => b"The operating system has blocked the request.\0",
        18 => b"RM has detected an NVML/RM version mismatch.\0",
        19 => b"In use by another client\0",
        20 => b"Insufficient Memory\0",
        21 => b"No data\0",
        22 => b"The requested vgpu operation is not available on target device, becasue ECC is enabled\0",
        23 => b"Ran out of critical resources, other than memory\0",
        24 => b"Ran out of critical resources, other than memory\0",
        25 => b"Argument version mismatch\0",
        26 => b"The requested functionality has been deprecated\0",
        27 => b"The system is not ready for the request\0",
        28 => b"No GPUs were found\0",
        29 => b"Resource not in correct state to perform requested operation\0",
        _ => b"Unknown Error\0",
    };
    text.as_ptr().cast()
}
