//! TODO(in progress): coalesce.
