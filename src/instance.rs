//! TODO(in progress): instance.
