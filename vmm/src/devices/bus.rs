//! An address bus (port I/O or MMIO): non-overlapping ranges, each served by one device.
//! vCPU threads dispatch their exits here; an access that does not fall entirely inside one
//! device's range reads as all ones and writes nowhere, as on real hardware.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device on a bus. `offset` is relative to the start of the range it was inserted at.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} is empty or wraps around")]
    BadRange { base: u64, len: u64 },
    #[error("bus range {base:#x}+{len:#x} overlaps a device at {other:#x}")]
    Overlap { base: u64, len: u64, other: u64 },
}

type Shared = Arc<Mutex<dyn BusDevice>>;

#[derive(Default, Clone)]
pub struct Bus {
    /// base → (len, device)
    devices: BTreeMap<u64, (u64, Shared)>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, base: u64, len: u64, device: Shared) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0);
        let Some(end) = end else {
            return Err(BusError::BadRange { base, len });
        };
        // The closest range starting at or below `end - 1` is the only candidate overlap.
        if let Some((&other, &(other_len, _))) = self.devices.range(..end).next_back() {
            if other + other_len > base {
                return Err(BusError::Overlap { base, len, other });
            }
        }
        self.devices.insert(base, (len, device));
        Ok(())
    }

    /// The device whose range holds all of `[addr, addr + len)`, with the offset of `addr`.
    fn resolve(&self, addr: u64, len: usize) -> Option<(&Shared, u64)> {
        let (&base, (dev_len, device)) = self.devices.range(..=addr).next_back()?;
        let offset = addr - base;
        let end = offset.checked_add(u64::try_from(len).ok()?)?;
        (end <= *dev_len).then_some((device, offset))
    }

    /// Returns false (and fills `data` with ones) if no device claims the access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((device, offset)) => {
                match device.lock() {
                    Ok(mut d) => d.read(offset, data),
                    Err(_) => data.fill(0xff),
                }
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Returns false if no device claims the access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((device, offset)) => {
                if let Ok(mut d) = device.lock() {
                    d.write(offset, data);
                }
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset.to_le_bytes()[0]);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    fn dev() -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder::default()))
    }

    #[test]
    fn refuses_overlaps_empty_and_wrapping_ranges() {
        let mut bus = Bus::new();
        bus.insert(0x1000, 0x1000, dev()).unwrap();
        for (base, len) in [(0x1000, 1), (0xfff, 2), (0x1fff, 1), (0x800, 0x2000)] {
            assert!(
                matches!(bus.insert(base, len, dev()), Err(BusError::Overlap { .. })),
                "{base:#x}+{len:#x}"
            );
        }
        assert!(matches!(
            bus.insert(0x5000, 0, dev()),
            Err(BusError::BadRange { .. })
        ));
        assert!(matches!(
            bus.insert(u64::MAX, 2, dev()),
            Err(BusError::BadRange { .. })
        ));
        bus.insert(0x2000, 0x10, dev()).unwrap();
        bus.insert(0xff0, 0x10, dev()).unwrap();
    }

    #[test]
    fn dispatches_with_offsets_and_rejects_straddling_accesses() {
        let mut bus = Bus::new();
        let d = dev();
        bus.insert(0x3f8, 8, d.clone()).unwrap();
        let mut data = [0u8; 1];
        assert!(bus.read(0x3fd, &mut data));
        assert_eq!(data, [5]);
        assert!(bus.write(0x3f8, b"x"));
        assert_eq!(d.lock().unwrap().writes, vec![(0, vec![b'x'])]);

        let mut wide = [0u8; 4];
        assert!(!bus.read(0x3fe, &mut wide), "runs past the device");
        assert_eq!(wide, [0xff; 4]);
        assert!(!bus.write(0x3f7, &[0, 0]), "starts before the device");
        assert!(!bus.read(0, &mut data));
        assert!(!bus.read(u64::MAX, &mut wide));
        assert!(!bus.write(u64::MAX - 1, &[0; 8]));
        assert_eq!(d.lock().unwrap().writes.len(), 1);
    }
}
