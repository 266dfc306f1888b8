//! virtio-fs against a fake vhost-user backend: set-up, kicks, interrupts, reset.

use std::io;
use std::os::unix::net::UnixListener;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use super::*;
use crate::kvm::memory::create_guest_memory;
use husk_vsock::test_utils::{DriverQueue, MEM_SIZE};

/// A stand-in for virtiofsd: completes every request on the request queue with 7 bytes.
struct FakeFs {
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
}

impl VhostUserBackendMut for FakeFs {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        2
    }
    fn max_queue_size(&self) -> usize {
        1024
    }
    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << 34) // VIRTIO_F_RING_PACKED: the transport only does split rings
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
    }
    fn set_event_idx(&mut self, _enabled: bool) {}
    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.mem = Some(mem);
        Ok(())
    }
    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        let (Some(mem), Some(vring)) = (&self.mem, vrings.get(usize::from(device_event))) else {
            return Ok(());
        };
        let mem = mem.memory();
        let mut used = false;
        {
            let mut state = vring.get_mut();
            while let Some(chain) = state.get_queue_mut().pop_descriptor_chain(mem.clone()) {
                let head = chain.head_index();
                let _ = state.get_queue_mut().add_used(&*mem, head, 7);
                used = true;
            }
        }
        if used {
            vring.signal_used_queue()?;
        }
        Ok(())
    }
}

fn log() -> Logger {
    Logger::root(slog::Discard, slog::o!())
}

fn serve_fake(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let path = dir.path().join("fs.sock");
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        let backend = Arc::new(RwLock::new(FakeFs { mem: None }));
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut daemon = VhostUserDaemon::new("fake-fs".into(), backend, mem).unwrap();
        daemon.start(&mut Listener::from(listener)).unwrap();
        let _ = daemon.wait();
    });
    path
}

#[test]
fn connecting_to_a_missing_backend_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = VirtioFs::connect(&dir.path().join("none.sock"), "husk", log()).err();
    assert!(matches!(err, Some(VirtioError::Socket(_))));
}

#[test]
fn hands_memory_and_rings_to_the_backend_and_relays_its_interrupts() {
    let dir = tempfile::tempdir().unwrap();
    let socket = serve_fake(&dir);
    let mut fs = VirtioFs::connect(&socket, "husk", log()).unwrap();
    assert_eq!(fs.device_type(), 26);
    assert_eq!(fs.queue_max_sizes(), &[1024, 1024]);
    assert_eq!(
        fs.features(),
        (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX),
        "only known features reach the guest"
    );
    let mut config = [0u8; 40];
    fs.read_config(0, &mut config);
    assert_eq!(&config[..5], b"husk\0");
    assert_eq!(&config[36..], &1u32.to_le_bytes());
    assert!(fs.kicks_handled_elsewhere());

    // Memfd-backed guest RAM, as the monitor creates it; rings laid out by a mock driver.
    let mem: Memory = Arc::new(create_guest_memory(MEM_SIZE as u64).unwrap());
    let hiprio = DriverQueue::new(&mem, 0);
    let mut request = DriverQueue::new(&mem, 1);
    let irq = IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    let kicks: Vec<EventFd> = (0..2)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    fs.activate(Activation {
        mem: mem.clone(),
        queues: vec![hiprio.device_queue(), request.device_queue()],
        irq: irq.clone(),
        kicks: kicks.iter().map(|k| k.try_clone().unwrap()).collect(),
        acked_features: (1 << VIRTIO_F_VERSION_1) | (1 << 34),
    })
    .unwrap();

    // The guest posts a request and kicks: the kick goes straight to the backend.
    let head = request.post_raw(&[(20 << 20, 64, false), (21 << 20, 4096, true)]);
    kicks[1].write(1).unwrap();
    let call = fs.host_fds()[1];
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut fds = [libc::pollfd {
        fd: call,
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: `fds` is a valid array of one pollfd for the duration of the call.
    while unsafe { libc::poll(fds.as_mut_ptr(), 1, 50) } == 0 {
        assert!(Instant::now() < deadline, "backend never signalled");
    }
    assert_eq!(irq.status(), 0, "not relayed yet");
    fs.host_event(1);
    assert_eq!(irq.status(), INT_VRING);
    assert_eq!(request.used(), vec![(head, 7)]);

    // After a reset the driver may set the device up again.
    fs.reset();
    let hiprio = DriverQueue::new(&mem, 0);
    let request = DriverQueue::new(&mem, 1);
    fs.activate(Activation {
        mem: mem.clone(),
        queues: vec![hiprio.device_queue(), request.device_queue()],
        irq: irq.clone(),
        kicks: kicks.iter().map(|k| k.try_clone().unwrap()).collect(),
        acked_features: (1 << VIRTIO_F_VERSION_1) | (1 << 34),
    })
    .unwrap();
}

#[test]
fn activation_refuses_wrong_queue_counts() {
    let dir = tempfile::tempdir().unwrap();
    let socket = serve_fake(&dir);
    let mut fs = VirtioFs::connect(
        &socket,
        "a-tag-that-is-far-too-long-for-the-config-space",
        log(),
    )
    .unwrap();
    let mut config = [0u8; 40];
    fs.read_config(0, &mut config);
    assert_eq!(
        &config[..MAX_TAG_LEN],
        &b"a-tag-that-is-far-too-long-for-the-config-space"[..MAX_TAG_LEN],
        "tag cut to the config field"
    );
    assert_eq!(
        &config[MAX_TAG_LEN..],
        &1u32.to_le_bytes(),
        "the queue count follows"
    );
    let mem: Memory = Arc::new(create_guest_memory(MEM_SIZE as u64).unwrap());
    let q = DriverQueue::new(&mem, 0);
    let err = fs
        .activate(Activation {
            mem: mem.clone(),
            queues: vec![q.device_queue()],
            irq: IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
            kicks: vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()],
            acked_features: 1 << VIRTIO_F_VERSION_1,
        })
        .err();
    assert!(matches!(
        err,
        Some(VirtioError::QueueCount { got: 1, want: 2 })
    ));
}
