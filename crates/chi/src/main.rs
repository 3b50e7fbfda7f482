//! The `chi` command-line tool.

fn main() {
    println!("chi {}", env!("CARGO_PKG_VERSION"));
}
