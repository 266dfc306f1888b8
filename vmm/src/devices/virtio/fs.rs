//! virtio-fs frontend: the device model lives in `virtiofsd`, reached over vhost-user. The
//! monitor only owns the config space (tag, request queue count), hands virtiofsd the guest
//! RAM (memfd-backed and shared) and the rings, and relays its "used buffer" notifications into
//! the guest's interrupt: with virtio-mmio's shared interrupt line the interrupt status bit has
//! to be set by the monitor, so virtiofsd cannot signal the irqfd directly. Queue kicks go from
//! KVM's ioeventfds straight to virtiofsd.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use slog::{Logger, debug, info, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::{Activation, INT_VRING, IrqTrigger, Memory, TYPE_FS, VirtioDevice, VirtioError};

/// Longest tag (virtio spec 5.11.4).
pub const MAX_TAG_LEN: usize = husk_vmm_config::MAX_FS_TAG_LEN;
/// One high-priority queue plus this many request queues.
const REQUEST_QUEUES: u32 = 1;
const QUEUE_SIZE: u16 = 1024;
/// Features the monitor lets through from virtiofsd to the guest.
const PASSED_FEATURES: u64 =
    (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_INDIRECT_DESC) | (1 << VIRTIO_RING_F_EVENT_IDX);
/// Bound on every vhost-user exchange: a wedged virtiofsd must not hang a vCPU forever.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(5);

pub struct VirtioFs {
    frontend: Frontend,
    backend_features: u64,
    protocol_features: bool,
    config: Vec<u8>,
    queue_sizes: Vec<u16>,
    calls: Vec<EventFd>,
    irq: Option<IrqTrigger>,
    started: Vec<usize>,
    log: Logger,
}

impl VirtioFs {
    /// Connects to virtiofsd at `socket` and learns its features.
    pub fn connect(socket: &Path, tag: &str, log: Logger) -> Result<Self, VirtioError> {
        let io = VirtioError::Socket;
        let stream = UnixStream::connect(socket).map_err(io)?;
        stream.set_read_timeout(Some(SOCKET_TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(SOCKET_TIMEOUT)).map_err(io)?;
        let queues = 1 + REQUEST_QUEUES as usize;
        let mut frontend = Frontend::from_stream(stream, queues as u64);
        frontend.set_owner()?;
        let backend_features = frontend.get_features()?;
        let protocol_features =
            backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
        if protocol_features {
            // Nothing optional is needed; negotiating the empty set keeps the session simple.
            let offered = frontend.get_protocol_features()?;
            frontend.set_protocol_features(offered & VhostUserProtocolFeatures::empty())?;
        }
        let mut config = vec![0u8; MAX_TAG_LEN + 4];
        let tag = tag.as_bytes();
        let n = tag.len().min(MAX_TAG_LEN);
        config[..n].copy_from_slice(&tag[..n]);
        config[MAX_TAG_LEN..].copy_from_slice(&REQUEST_QUEUES.to_le_bytes());
        let calls = (0..queues)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))
            .collect::<Result<Vec<_>, _>>()
            .map_err(io)?;
        info!(log, "connected to virtiofsd"; "features" => format!("{backend_features:#x}"));
        Ok(Self {
            frontend,
            backend_features,
            protocol_features,
            config,
            queue_sizes: vec![QUEUE_SIZE; queues],
            calls,
            irq: None,
            started: Vec::new(),
            log,
        })
    }

    fn start_queue(
        &mut self,
        mem: &Memory,
        i: usize,
        q: &Queue,
        kick: &EventFd,
    ) -> Result<(), VirtioError> {
        let hva = |gpa: u64| {
            mem.get_host_address(GuestAddress(gpa))
                .map(|p| p as u64)
                .map_err(|_| VirtioError::BadQueue(i))
        };
        let config = VringConfigData {
            queue_max_size: q.max_size(),
            queue_size: q.size(),
            flags: 0,
            desc_table_addr: hva(q.desc_table())?,
            used_ring_addr: hva(q.used_ring())?,
            avail_ring_addr: hva(q.avail_ring())?,
            log_addr: None,
        };
        let call = self.calls.get(i).ok_or(VirtioError::BadQueue(i))?;
        self.frontend.set_vring_num(i, q.size())?;
        self.frontend.set_vring_addr(i, &config)?;
        self.frontend.set_vring_base(i, 0)?;
        self.frontend.set_vring_call(i, call)?;
        self.frontend.set_vring_kick(i, kick)?;
        if self.protocol_features {
            self.frontend.set_vring_enable(i, true)?;
        }
        self.started.push(i);
        Ok(())
    }
}

impl VirtioDevice for VirtioFs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.backend_features & PASSED_FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), VirtioError> {
        if a.queues.len() != self.queue_sizes.len() || a.kicks.len() != a.queues.len() {
            return Err(VirtioError::QueueCount {
                got: a.queues.len(),
                want: self.queue_sizes.len(),
            });
        }
        let mut features = a.acked_features & PASSED_FEATURES;
        if self.protocol_features {
            features |= VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        }
        self.frontend.set_features(features)?;
        let mut regions = Vec::new();
        for region in a.mem.iter() {
            let info = VhostUserMemoryRegionInfo::from_guest_region(region)
                .map_err(|_| VirtioError::SharedMemory(region.start_addr().0))?;
            regions.push(info);
        }
        self.frontend.set_mem_table(&regions)?;
        for (i, (q, kick)) in a.queues.iter().zip(&a.kicks).enumerate() {
            if q.ready() {
                self.start_queue(&a.mem, i, q, kick)?;
            }
        }
        self.irq = Some(a.irq);
        Ok(())
    }

    fn reset(&mut self) {
        // GET_VRING_BASE stops a ring; virtiofsd forgets its state for it.
        for i in std::mem::take(&mut self.started) {
            if let Err(e) = self.frontend.get_vring_base(i) {
                warn!(self.log, "stopping a virtio-fs queue failed"; "queue" => i, "error" => %e);
            }
        }
        self.irq = None;
    }

    fn host_fds(&self) -> Vec<RawFd> {
        self.calls.iter().map(AsRawFd::as_raw_fd).collect()
    }

    fn kicks_handled_elsewhere(&self) -> bool {
        true
    }

    fn host_event(&mut self, index: usize) {
        if let Some(call) = self.calls.get(index) {
            let _ = call.read();
        }
        match &self.irq {
            Some(irq) => {
                let _ = irq.trigger(INT_VRING);
            }
            None => debug!(self.log, "virtiofsd signalled an inactive queue"; "queue" => index),
        }
    }
}

#[cfg(test)]
#[path = "fs_tests.rs"]
mod tests;
