//! Progress output.

/// Prints one step of a task.
pub fn step(msg: impl AsRef<str>) {
    println!("==> {}", msg.as_ref());
}

/// Prints a detail under a step.
pub fn note(msg: impl AsRef<str>) {
    println!("    {}", msg.as_ref());
}
