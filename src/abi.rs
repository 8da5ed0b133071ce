//! TODO(in progress): abi.
