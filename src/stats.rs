//! TODO(in progress): stats.
