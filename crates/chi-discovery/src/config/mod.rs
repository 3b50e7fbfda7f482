//! Configuration (see `raw` and the validated types).
