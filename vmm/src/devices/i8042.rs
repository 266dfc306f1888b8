//! Just enough of the i8042 keyboard controller for the guest to reset the machine: the CPU
//! reset command (`0xfe` to the command port), which the husk guest uses (`reboot=k`: Linux's
//! reboot code writes the port itself, no keyboard driver needed). A triple fault also ends
//! the VM, as a crash (see `kvm::diag`).

use std::sync::Arc;

use super::{BusDevice, ExitSignal};

/// The controller's ports: data at 0x60, status/command at 0x64 (0x61 is the PC speaker
/// port, which KVM's in-kernel PIT serves).
pub const I8042_PORT: u64 = 0x60;
pub const I8042_PORT_LEN: u64 = 5;
const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;
/// "Pulse output line 0 low": resets the CPU.
const CMD_RESET_CPU: u8 = 0xfe;
/// Exit status of the monitor when the guest asked for a reset.
pub const EXIT_CODE_RESET: i32 = 0;

pub struct I8042 {
    exit: Arc<ExitSignal>,
}

impl I8042 {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self { exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Status: both buffers empty; data: nothing pending.
        match offset {
            DATA_OFFSET | COMMAND_OFFSET => data.fill(0),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            self.exit.request(
                EXIT_CODE_RESET,
                "guest reset the machine (i8042 reset command)",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_ends_the_vm_other_writes_do_not() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut dev = I8042::new(exit.clone());
        dev.write(DATA_OFFSET, &[CMD_RESET_CPU]);
        dev.write(COMMAND_OFFSET, &[0xad]);
        dev.write(COMMAND_OFFSET, &[]);
        assert!(!exit.is_requested());
        let mut status = [0xaa];
        dev.read(COMMAND_OFFSET, &mut status);
        assert_eq!(status, [0]);
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        let reason = exit.reason().unwrap();
        assert_eq!(reason.code, EXIT_CODE_RESET);
        assert!(reason.description.contains("reset"));
    }
}
