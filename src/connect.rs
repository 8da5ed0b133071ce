//! TODO(in progress): connect.
