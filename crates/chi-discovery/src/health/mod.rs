//! Health checking (see the issue "Health checking").
