//! TODO(in progress): request.
