//! TODO(in progress): ring.
