//! Load balancing strategies (see the issue "Load balancing").
