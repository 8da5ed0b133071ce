//! TODO(in progress): kva.
