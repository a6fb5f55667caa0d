//! The device runtime under every op: adapter selection, buffers, the
//! pipeline cache, lazy command recording, binding windows for tensors larger
//! than one storage binding, and error capture (out of memory, device lost).
//!
//! Recording model: ops append dispatches to one open compute pass; nothing
//! reaches the GPU until a download (or a full parameter arena) flushes the
//! encoder with one `queue.submit`. Each dispatch gets its own 256-byte slot in
//! a uniform parameter arena written once per submission, so parameters never
//! race with in-flight work. Host-to-device writes are recorded as copies from
//! a staging buffer in the same encoder, which keeps them in program order
//! with the dispatches around them.
//!
//! Every wait on the device is bounded (`crate::watchdog`): a device that
//! does not finish a download, a synchronize or its own creation within
//! `TERN_WGPU_TIMEOUT` seconds (default 120) is reported as lost, naming the
//! wait, instead of hanging the process.

use std::collections::HashMap;
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

use tern_backend::BackendError;

use crate::watchdog::{self, Stuck};

/// Parameter slot size (the largest `min_uniform_buffer_offset_alignment`
/// WebGPU allows).
pub(crate) const SLOT: u64 = 256;
/// Slots in one parameter arena; a full arena flushes the encoder.
const SLOTS: u64 = 8192;
/// Dispatches recorded before the encoder is submitted without waiting for
/// a download: the device starts on the first ones while the host records
/// the rest (a decode step is some 120 dependent dispatches whose recording
/// and submission cost the host about as much as the device spends running
/// them). `TERN_WGPU_SUBMIT_EVERY` overrides it (a tuning knob).
const SUBMIT_EVERY: u64 = 32;

/// Threads per workgroup of the element-wise kernels.
pub(crate) const WG: u32 = 256;

/// What `TERN_WGPU_STATS` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StatsMode {
    /// Unset: nothing is printed.
    Off,
    /// Any other value: the runtime's counters at exit.
    Counters,
    /// `profile`: counters, and each dispatch submitted and waited for
    /// alone, timed on the host per kernel (slow).
    Profile,
    /// `timestamps`: counters, and GPU time per kernel from timestamp
    /// queries written after every dispatch (where the adapter offers them).
    Timestamps,
}

impl StatsMode {
    pub(crate) fn parse(value: Option<&str>) -> StatsMode {
        match value {
            None => StatsMode::Off,
            Some("profile") => StatsMode::Profile,
            Some("timestamps") => StatsMode::Timestamps,
            Some(_) => StatsMode::Counters,
        }
    }

    fn from_env() -> StatsMode {
        let v = std::env::var_os("TERN_WGPU_STATS");
        StatsMode::parse(v.as_ref().map(|v| v.to_str().unwrap_or("")))
    }
}

/// Counters of the runtime's own work, printed at exit when the environment
/// variable `TERN_WGPU_STATS` is set (where the host time of a run goes).
#[derive(Default, Debug)]
pub(crate) struct Stats {
    dispatches: u64,
    bind_group_misses: u64,
    buffers_created: u64,
    submits: u64,
    record_s: f64,
    submit_s: f64,
    wait_s: f64,
    /// With `TERN_WGPU_STATS=profile`: seconds and calls per kernel, each
    /// dispatch submitted and waited for alone (slow; for finding hot spots).
    kernels: HashMap<String, (f64, u64)>,
    /// With `TERN_WGPU_STATS=timestamps`: GPU nanoseconds and dispatches per
    /// kernel id.
    gpu: HashMap<u32, (f64, u64)>,
}

/// Marks the timestamp written at the start of a compute pass.
const PASS_START: u32 = u32::MAX;

/// The GPU time of each dispatch in one submission's timestamps: `ticks[i]`
/// was written after the dispatch of kernel `ids[i]`, or at the start of a
/// pass where `ids[i]` is [`PASS_START`]; a dispatch gets the ticks since the
/// timestamp before it (same pass), times `period_ns`. Ticks that run
/// backwards (a reset counter) count as zero.
pub(crate) fn attribute(ticks: &[u64], ids: &[u32], period_ns: f64) -> Vec<(u32, f64)> {
    let mut out = Vec::with_capacity(ids.len());
    for i in 1..ticks.len().min(ids.len()) {
        if ids[i] != PASS_START {
            out.push((
                ids[i],
                ticks[i].saturating_sub(ticks[i - 1]) as f64 * period_ns,
            ));
        }
    }
    out
}

/// `TERN_WGPU_STATS=timestamps` on an adapter with timestamp queries inside
/// passes: one query set written during recording, resolved at each flush
/// into a readback buffer that the next wait reads.
struct Timestamps {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    /// Nanoseconds per timestamp tick (`Queue::get_timestamp_period`).
    period_ns: f64,
    /// Submitted readbacks not read yet.
    pending: Mutex<Vec<Readback>>,
}

struct Readback {
    buf: wgpu::Buffer,
    /// The kernel id of each query ([`PASS_START`] for a pass start).
    ids: Vec<u32>,
    mapped: mpsc::Receiver<Result<(), wgpu::BufferAsyncError>>,
}

/// Queries in the set: a submission holds at most this many timestamps (a
/// full set flushes the encoder, as a full parameter arena does).
const QUERIES: u32 = wgpu::QUERY_SET_MAX_QUERIES;

/// Bytes of freed buffers the pool keeps at most; past it a freed buffer
/// goes back to the device (a run whose shapes keep changing, such as
/// generation over prompts of many lengths, must not grow without bound).
const POOL_CAP: u64 = 1 << 30;

/// Freed buffers by size, for reuse.
#[derive(Default)]
pub(crate) struct Pool {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    bytes: u64,
}

impl Pool {
    /// Keep `buf` for reuse; false when the pool is full.
    pub fn put(&mut self, buf: &wgpu::Buffer) -> bool {
        if self.bytes + buf.size() > POOL_CAP {
            return false;
        }
        self.bytes += buf.size();
        self.free.entry(buf.size()).or_default().push(buf.clone());
        true
    }

    fn take(&mut self, size: u64) -> Option<wgpu::Buffer> {
        let b = self.free.get_mut(&size)?.pop()?;
        self.bytes -= size;
        Some(b)
    }
}

/// Bind groups kept for reuse before the cache starts over.
const BIND_GROUP_CACHE: usize = 16384;

/// A compiled kernel: its pipeline and bind group layout.
pub(crate) struct Kernel {
    pub pipeline: wgpu::ComputePipeline,
    name: String,
    layout: wgpu::BindGroupLayout,
    id: usize,
    /// Bytes of its WGSL parameter struct (naga's layout): every dispatch
    /// passes a Rust struct of exactly this size.
    params_size: u32,
}

#[derive(PartialEq, Eq, Hash)]
struct BindKey {
    kernel: usize,
    views: Vec<(wgpu::Buffer, u64, u64)>,
}

/// Why no wgpu backend could be opened.
#[derive(Debug, thiserror::Error)]
pub enum WgpuError {
    /// wgpu sees no adapter at all (no Vulkan, Metal or DX12 driver).
    #[error(
        "no GPU adapter found (Vulkan, Metal or DX12); on Linux without a GPU install \
         Mesa's lavapipe: apt-get install -y mesa-vulkan-drivers libvulkan1"
    )]
    NoAdapter,
    /// [`WgpuOptions::adapter`] names no adapter.
    #[error("no adapter matches {wanted:?}; available: {}", .available.join("; "))]
    NoMatch {
        /// The name asked for.
        wanted: String,
        /// Every adapter found: name, backend, device type.
        available: Vec<String>,
    },
    /// [`WgpuOptions::force_fallback`] and no software adapter.
    #[error("no fallback (software) adapter; available: {}", .available.join("; "))]
    NoFallback {
        /// Every adapter found: name, backend, device type.
        available: Vec<String>,
    },
    /// The adapter refused the device tern asked for.
    #[error(
        "{adapter}: could not open the device (asked for features {features}, buffers up to \
         {max_buffer} bytes, storage bindings up to {max_binding} bytes): {source}"
    )]
    RequestDevice {
        /// The adapter's name.
        adapter: String,
        /// The features asked for.
        features: String,
        /// The `max_buffer_size` limit asked for (the adapter's own).
        max_buffer: u64,
        /// The `max_storage_buffer_binding_size` limit asked for.
        max_binding: u64,
        source: Box<wgpu::RequestDeviceError>,
    },
    /// `TERN_WGPU_TIMEOUT` is not a positive number of seconds.
    #[error("{0}")]
    InvalidTimeout(String),
    /// Enumerating the adapters or opening the device did not finish within
    /// the timeout (a driver stuck inside the call).
    #[error("{0}")]
    Timeout(String),
}

/// How to pick and configure the adapter.
#[derive(Clone, Debug, Default)]
pub struct WgpuOptions {
    /// Use the adapter whose name contains this text (case-insensitive).
    pub adapter: Option<String>,
    /// Ask for the fallback (software) adapter, e.g. Mesa lavapipe.
    pub force_fallback: bool,
    /// Pretend the device allows at most this many bytes per storage binding
    /// (lower than the real limit only). Tests use it to drive every op
    /// through its split path with small tensors.
    pub max_binding: Option<u64>,
    /// Do not use f16 arithmetic even when the adapter offers SHADER_F16.
    pub no_f16: bool,
    /// Do not use subgroup operations even when the adapter offers them
    /// (the kernels then reduce through workgroup memory only); also
    /// `TERN_WGPU_NO_SUBGROUPS=1`. Tests use it to cover both paths.
    pub no_subgroups: bool,
    /// Workgroups a fused block dispatch launches at most (each then takes
    /// several batches of features); default 264 or `TERN_WGPU_FUSED_WGS`.
    /// Tests set a small number to drive the batched path.
    pub fused_workgroups: Option<usize>,
}

/// A summary of the chosen adapter for `tern info`.
#[derive(Clone, Debug)]
pub struct AdapterReport {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub subgroup_min: u32,
    pub subgroup_max: u32,
    pub max_storage_binding: u64,
    pub max_buffer: u64,
    pub max_workgroup_storage: u32,
    pub max_invocations: u32,
    pub effective_binding: u64,
    pub shader_f16: bool,
    pub subgroups: bool,
    pub features: String,
}

/// A region of a device buffer bound to one shader binding.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    pub buf: &'a wgpu::Buffer,
    /// Byte offset (a multiple of the storage offset alignment).
    pub offset: u64,
    /// Byte size (a multiple of 4, at least 4).
    pub size: u64,
}

struct Recording {
    encoder: wgpu::CommandEncoder,
    pass: Option<wgpu::ComputePass<'static>>,
    params: Vec<u8>,
    /// `TERN_WGPU_STATS=timestamps`: the kernel id of each timestamp query
    /// written so far ([`PASS_START`] at a pass start); empty otherwise.
    queries: Vec<u32>,
}

pub(crate) struct Ctx {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    /// Effective bytes per storage binding (device limit or the test override).
    pub max_binding: u64,
    /// Storage buffer offset alignment in bytes.
    pub align: u64,
    pub f16: bool,
    /// The kernels may use subgroup operations (see [`subgroups_usable`]).
    pub sg: bool,
    pipelines: Mutex<HashMap<String, Arc<Kernel>>>,
    bind_groups: Mutex<HashMap<BindKey, wgpu::BindGroup>>,
    pub dropped: Arc<Mutex<Vec<wgpu::Buffer>>>,
    rec: Mutex<Option<Recording>>,
    scratch: Mutex<HashMap<String, wgpu::Buffer>>,
    param_buf: wgpu::Buffer,
    /// The first asynchronous error (uncaptured validation/OOM, device lost).
    error: Arc<Mutex<Option<BackendError>>>,
    /// Why the device was lost (sticky: every later call reports it).
    lost: Arc<Mutex<Option<String>>>,
    /// Bytes allocated from the device for tern's buffers (in use or
    /// pooled), and the peak.
    pub mem: Arc<Mutex<(u64, u64)>>,
    /// Freed buffers by size, reused by the next allocation of that size:
    /// training allocates the same activation buffers every step, and a
    /// reused buffer keeps its cached bind groups.
    pub pool: Arc<Mutex<Pool>>,
    stats: Mutex<Stats>,
    /// Dispatches per submission (see [`SUBMIT_EVERY`]).
    submit_every: u64,
    /// [`WgpuOptions::fused_workgroups`] or `TERN_WGPU_FUSED_WGS`.
    pub fused_wgs: Option<usize>,
    mode: StatsMode,
    /// Timestamp queries (`TERN_WGPU_STATS=timestamps` on an adapter that
    /// offers them).
    ts: Option<Timestamps>,
    /// How long any wait on the device may take (`TERN_WGPU_TIMEOUT`).
    timeout: Duration,
    /// A wait ran out of time (the device is reported lost from then on).
    stuck: std::sync::atomic::AtomicBool,
    /// What [`Ctx::scratch_or_defer`] hands out when allocation fails.
    stand_in: wgpu::Buffer,
    /// Tests: fail every new scratch allocation as out of memory.
    pub refuse_scratch: std::sync::atomic::AtomicBool,
}

impl Drop for Ctx {
    fn drop(&mut self) {
        // What was recorded but never flushed is dropped unsubmitted. Wait
        // for submitted work within the timeout: wgpu's queue waits for it
        // without one when dropped, so a device stuck past the timeout is
        // leaked instead (one warning) rather than hanging the process.
        // A device lost in the driver is not polled (wgpu panics on a poll
        // that meets one); one only given up on after a timeout is.
        self.rec.get_mut().unwrap_or_else(|p| p.into_inner()).take();
        let stuck = *self.stuck.get_mut();
        let waited = (stuck || !self.is_lost()).then(|| {
            self.device.poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: Some(self.timeout),
            })
        });
        if let Some(Err(wgpu::PollError::Timeout)) = waited {
            eprintln!(
                "{}: {}; its queue is leaked instead of waited for",
                self.name(),
                Stuck {
                    what: "its work before being dropped".into(),
                    after: self.timeout,
                }
            );
            std::mem::forget(self.queue.clone());
        } else {
            self.collect_timestamps();
        }
        if self.mode != StatsMode::Off {
            self.print_stats();
        }
    }
}

fn backend_name(info: &wgpu::AdapterInfo) -> String {
    format!("wgpu: {} ({:?})", info.name, info.backend)
}

/// The device opened for a [`Ctx`].
struct Opened {
    info: wgpu::AdapterInfo,
    device: wgpu::Device,
    queue: wgpu::Queue,
    f16: bool,
}

/// One wgpu instance for the process: every device is opened from it, so
/// the driver's instance is created once and never destroyed while other
/// threads open devices.
fn instance() -> &'static wgpu::Instance {
    static INSTANCE: OnceLock<wgpu::Instance> = OnceLock::new();
    INSTANCE.get_or_init(|| {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = desc_backends();
        wgpu::Instance::new(desc)
    })
}

/// Held while adapters are enumerated and a device is created: some
/// drivers (NVIDIA's Vulkan driver among them) are known to race when
/// several threads create devices at once, as the test harness does.
static OPENING: Mutex<()> = Mutex::new(());

/// Enumerate the adapters, pick one as `opts` says, open it (blocking; run
/// by [`Ctx::new`] on a helper thread under the timeout).
fn open_device(opts: &WgpuOptions, timestamps: bool) -> Result<Opened, WgpuError> {
    let _one_at_a_time = OPENING.lock().unwrap_or_else(|p| p.into_inner());
    let adapters = pollster::block_on(instance().enumerate_adapters(desc_backends()));
    if adapters.is_empty() {
        return Err(WgpuError::NoAdapter);
    }
    let names: Vec<String> = adapters
        .iter()
        .map(|a| {
            let i = a.get_info();
            format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)
        })
        .collect();
    let pick = if let Some(want) = &opts.adapter {
        let want = want.to_lowercase();
        adapters
            .into_iter()
            .find(|a| a.get_info().name.to_lowercase().contains(&want))
            .ok_or_else(|| WgpuError::NoMatch {
                wanted: opts.adapter.clone().unwrap_or_default(),
                available: names.clone(),
            })?
    } else if opts.force_fallback {
        adapters
            .into_iter()
            .find(|a| a.get_info().device_type == wgpu::DeviceType::Cpu)
            .ok_or_else(|| WgpuError::NoFallback {
                available: names.clone(),
            })?
    } else {
        // Discrete, then integrated, then anything else.
        let rank = |a: &wgpu::Adapter| match a.get_info().device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Other => 3,
            wgpu::DeviceType::Cpu => 4,
        };
        let mut v = adapters;
        v.sort_by_key(rank);
        v.into_iter().next().ok_or(WgpuError::NoAdapter)?
    };
    let info = pick.get_info();
    let adapter_limits = pick.limits();
    let adapter_features = pick.features();
    let mut want = wgpu::Features::empty();
    let f16 = adapter_features.contains(wgpu::Features::SHADER_F16) && !opts.no_f16;
    if f16 {
        want |= wgpu::Features::SHADER_F16;
    }
    let sg = subgroups_usable(adapter_features, &info, opts);
    if sg {
        want |= wgpu::Features::SUBGROUP;
    }
    if timestamps && adapter_features.contains(TIMESTAMPS) {
        want |= TIMESTAMPS;
    }
    // Ask for everything the adapter offers: buffer sizes, workgroup
    // storage and invocation counts are what large models need.
    let (device, queue) = pollster::block_on(pick.request_device(&wgpu::DeviceDescriptor {
        label: Some("tern"),
        required_features: want,
        required_limits: adapter_limits.clone(),
        experimental_features: wgpu::ExperimentalFeatures::disabled(),
        memory_hints: wgpu::MemoryHints::Performance,
        trace: wgpu::Trace::Off,
    }))
    .map_err(|source| WgpuError::RequestDevice {
        adapter: info.name.clone(),
        features: format!("{want:?}"),
        max_buffer: adapter_limits.max_buffer_size,
        max_binding: adapter_limits.max_storage_buffer_binding_size,
        source: Box::new(source),
    })?;
    Ok(Opened {
        info,
        device,
        queue,
        f16,
    })
}

/// Whether the kernels use subgroup operations on this adapter: it offers
/// them, in power-of-two sizes up to 128 (a 256-thread workgroup is then
/// made of whole subgroups), and neither [`WgpuOptions::no_subgroups`] nor
/// `TERN_WGPU_NO_SUBGROUPS=1` turns them off. The kernels work for any such
/// size (NVIDIA's 32, AMD's 64, lavapipe's 8...), so CI checks the same
/// code a large GPU runs.
fn subgroups_usable(
    features: wgpu::Features,
    info: &wgpu::AdapterInfo,
    opts: &WgpuOptions,
) -> bool {
    let off = opts.no_subgroups || std::env::var("TERN_WGPU_NO_SUBGROUPS").is_ok_and(|v| v == "1");
    let (lo, hi) = (info.subgroup_min_size, info.subgroup_max_size);
    features.contains(wgpu::Features::SUBGROUP)
        && !off
        && lo >= 1
        && hi <= 128
        && lo.is_power_of_two()
        && hi.is_power_of_two()
}

/// The features `TERN_WGPU_STATS=timestamps` needs.
const TIMESTAMPS: wgpu::Features =
    wgpu::Features::TIMESTAMP_QUERY.union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES);

impl Ctx {
    /// Open the device `opts` describes, with the statistics mode and the
    /// timeout the environment sets (`TERN_WGPU_STATS`, `TERN_WGPU_TIMEOUT`).
    pub fn new(opts: &WgpuOptions) -> Result<Ctx, WgpuError> {
        let timeout = watchdog::timeout_from_env().map_err(WgpuError::InvalidTimeout)?;
        Ctx::with_settings(opts, StatsMode::from_env(), timeout)
    }

    /// [`Ctx::new`] with the statistics mode and the timeout given.
    pub(crate) fn with_settings(
        opts: &WgpuOptions,
        mode: StatsMode,
        timeout: Duration,
    ) -> Result<Ctx, WgpuError> {
        let o = opts.clone();
        let timestamps = mode == StatsMode::Timestamps;
        let Opened {
            info,
            device,
            queue,
            f16,
        } = watchdog::on_helper_thread(
            "adapter enumeration and device creation",
            timeout,
            move || open_device(&o, timestamps),
        )
        .map_err(|e| WgpuError::Timeout(e.to_string()))??;
        let limits = device.limits();
        let features = device.features();
        let align = limits.min_storage_buffer_offset_alignment.max(4) as u64;
        let mut max_binding = limits.max_storage_buffer_binding_size;
        if let Some(m) = opts.max_binding {
            max_binding = max_binding.min(m.max(2 * align));
        }
        max_binding -= max_binding % align;

        let error: Arc<Mutex<Option<BackendError>>> = Arc::new(Mutex::new(None));
        let name = backend_name(&info);
        {
            let error = error.clone();
            let name = name.clone();
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                let mut slot = error.lock().unwrap_or_else(|p| p.into_inner());
                if slot.is_none() {
                    *slot = Some(match e {
                        wgpu::Error::OutOfMemory { .. } => BackendError::OutOfMemory {
                            backend: name.clone(),
                            what: "a device operation".into(),
                            bytes: 0,
                        },
                        other => BackendError::DeviceLost {
                            backend: name.clone(),
                            reason: format!("device error: {other}"),
                        },
                    });
                }
            }));
        }
        let lost: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        {
            let lost = lost.clone();
            device.set_device_lost_callback(move |reason, msg| {
                let mut slot = lost.lock().unwrap_or_else(|p| p.into_inner());
                if slot.is_none() {
                    *slot = Some(format!("{reason:?}: {msg}"));
                }
            });
        }
        let stand_in = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("tern stand-in"),
            size: SLOT,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let param_buf = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("tern params"),
            size: SLOT * SLOTS,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let ts = if mode != StatsMode::Timestamps {
            None
        } else if features.contains(TIMESTAMPS) {
            Some(Timestamps {
                set: device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("tern timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count: QUERIES,
                }),
                resolve: device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("tern timestamps"),
                    size: QUERIES as u64 * wgpu::QUERY_SIZE as u64,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                }),
                period_ns: queue.get_timestamp_period() as f64,
                pending: Mutex::new(Vec::new()),
            })
        } else {
            eprintln!(
                "{name}: TERN_WGPU_STATS=timestamps needs TIMESTAMP_QUERY and \
                 TIMESTAMP_QUERY_INSIDE_PASSES, which this adapter lacks; counters only"
            );
            None
        };
        Ok(Ctx {
            device,
            queue,
            info,
            limits,
            features,
            max_binding,
            align,
            f16,
            sg: features.contains(wgpu::Features::SUBGROUP),
            pipelines: Mutex::new(HashMap::new()),
            bind_groups: Mutex::new(HashMap::new()),
            dropped: Arc::new(Mutex::new(Vec::new())),
            rec: Mutex::new(None),
            scratch: Mutex::new(HashMap::new()),
            param_buf,
            error,
            lost,
            mem: Arc::new(Mutex::new((0, 0))),
            pool: Arc::new(Mutex::new(Pool::default())),
            stats: Mutex::new(Stats::default()),
            fused_wgs: opts.fused_workgroups.filter(|&n| n > 0).or_else(|| {
                std::env::var("TERN_WGPU_FUSED_WGS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0)
            }),
            submit_every: std::env::var("TERN_WGPU_SUBMIT_EVERY")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|&n| n > 0)
                .unwrap_or(SUBMIT_EVERY),
            mode,
            ts,
            timeout,
            stuck: Default::default(),
            stand_in,
            refuse_scratch: Default::default(),
        })
    }

    pub fn name(&self) -> String {
        backend_name(&self.info)
    }

    pub fn report(&self) -> AdapterReport {
        AdapterReport {
            name: self.info.name.clone(),
            backend: format!("{:?}", self.info.backend),
            device_type: format!("{:?}", self.info.device_type),
            driver: self.info.driver.clone(),
            driver_info: self.info.driver_info.clone(),
            subgroup_min: self.info.subgroup_min_size,
            subgroup_max: self.info.subgroup_max_size,
            max_storage_binding: self.limits.max_storage_buffer_binding_size,
            max_buffer: self.limits.max_buffer_size,
            max_workgroup_storage: self.limits.max_compute_workgroup_storage_size,
            max_invocations: self.limits.max_compute_invocations_per_workgroup,
            effective_binding: self.max_binding,
            shader_f16: self.f16,
            subgroups: self.features.contains(wgpu::Features::SUBGROUP),
            features: format!("{:?}", self.features),
        }
    }

    /// The pending asynchronous error, if any: a lost device (reported by
    /// every call from then on), else the first captured error (taken).
    pub fn take_error(&self) -> Option<BackendError> {
        if let Some(reason) = self.lost.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Some(self.lost(reason));
        }
        self.error.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn is_lost(&self) -> bool {
        self.lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    fn lost(&self, reason: String) -> BackendError {
        BackendError::DeviceLost {
            backend: self.name(),
            reason,
        }
    }

    // ---- buffers ------------------------------------------------------------

    /// A storage buffer of `bytes` (at least 4): a pooled buffer of that
    /// size (`true`: its contents are stale) or a fresh zeroed one (`false`).
    pub fn buffer(&self, what: &str, bytes: u64) -> Result<(wgpu::Buffer, bool), BackendError> {
        let size = bytes.max(4).next_multiple_of(4);
        if let Some(e) = self.is_lost().then(|| self.take_error()).flatten() {
            return Err(e);
        }
        if let Some(b) = self
            .pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(size)
        {
            return Ok((b, true));
        }
        match self.fresh(what, size) {
            Err(BackendError::OutOfMemory { .. }) if self.trim_pool() > 0 => {
                self.fresh(what, size).map(|b| (b, false))
            }
            r => r.map(|b| (b, false)),
        }
    }

    /// Give every pooled buffer back to the device; returns the bytes freed.
    pub fn trim_pool(&self) -> u64 {
        let free: Vec<wgpu::Buffer> = {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            pool.bytes = 0;
            pool.free.drain().flat_map(|(_, v)| v).collect()
        };
        let bytes: u64 = free.iter().map(wgpu::Buffer::size).sum();
        let mut m = self.mem.lock().unwrap_or_else(|p| p.into_inner());
        m.0 = m.0.saturating_sub(bytes);
        drop(m);
        self.dropped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(free);
        bytes
    }

    fn fresh(&self, what: &str, size: u64) -> Result<wgpu::Buffer, BackendError> {
        if size > self.limits.max_buffer_size {
            return Err(BackendError::Limit {
                backend: self.name(),
                what: format!("buffer for {what}"),
                needed: size,
                limit: self.limits.max_buffer_size,
            });
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let popped = watchdog::block_on_within(
            &format!("the out-of-memory check of a {size}-byte buffer for {what}"),
            self.timeout,
            scope.pop(),
        );
        if let Some(e) = popped.map_err(|e| self.stuck(e))? {
            return Err(BackendError::OutOfMemory {
                backend: self.name(),
                what: format!("{what} ({e})"),
                bytes: size,
            });
        }
        let mut m = self.mem.lock().unwrap_or_else(|p| p.into_inner());
        m.0 += size;
        m.1 = m.1.max(m.0);
        self.stat(|s| s.buffers_created += 1);
        Ok(buf)
    }

    /// Forget every cached scratch buffer.
    pub fn drop_scratch(&self) {
        let old: Vec<wgpu::Buffer> = self
            .scratch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, b)| b)
            .collect();
        let bytes: u64 = old.iter().map(wgpu::Buffer::size).sum();
        let mut m = self.mem.lock().unwrap_or_else(|p| p.into_inner());
        m.0 = m.0.saturating_sub(bytes);
        drop(m);
        self.dropped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(old);
    }

    /// [`Ctx::scratch`] for ops, which cannot return errors: when the device
    /// cannot provide the buffer, the error is held for the next call that
    /// can report it (`download`, `synchronize`) and a small stand-in buffer
    /// is returned, so the op records harmless bounded dispatches instead of
    /// panicking.
    pub fn scratch_or_defer(&self, key: &str, bytes: u64) -> wgpu::Buffer {
        match self.scratch(key, bytes) {
            Ok(b) => b,
            Err(e) => {
                self.error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(e);
                self.stand_in.clone()
            }
        }
    }

    /// A scratch storage buffer of at least `bytes`, kept under `key` and
    /// reused by later calls (grown when too small). Dispatches are ordered,
    /// so an op may reuse the scratch of an earlier op freely; within one op,
    /// use distinct keys for buffers that must coexist.
    pub fn scratch(&self, key: &str, bytes: u64) -> Result<wgpu::Buffer, BackendError> {
        if self
            .refuse_scratch
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(BackendError::OutOfMemory {
                backend: self.name(),
                what: format!("scratch {key} (refused for a test)"),
                bytes,
            });
        }
        let mut cache = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = cache.get(key) {
            if b.size() >= bytes {
                return Ok(b.clone());
            }
        }
        let size = bytes
            .max(4)
            .next_power_of_two()
            .min(self.limits.max_buffer_size);
        let buf = self.fresh(key, size.max(bytes).next_multiple_of(4))?;
        if let Some(old) = cache.insert(key.to_string(), buf.clone()) {
            let mut m = self.mem.lock().unwrap_or_else(|p| p.into_inner());
            m.0 = m.0.saturating_sub(old.size());
            self.dropped
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(old);
        }
        Ok(buf)
    }

    /// Record a copy of `data` into `dst` at byte `offset`, in program order.
    pub fn write_bytes(&self, dst: &wgpu::Buffer, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        assert!(
            offset % 4 == 0 && data.len() % 4 == 0,
            "write_bytes: unaligned"
        );
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("tern upload"),
            size: data.len() as u64,
            usage: wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: true,
        });
        match staging.slice(..).get_mapped_range_mut() {
            Ok(mut view) => view.copy_from_slice(data),
            // Only a lost or failed device refuses a fresh mapping; the
            // error is reported by the next download.
            Err(e) => {
                let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
                slot.get_or_insert(self.lost(format!("upload mapping: {e}")));
                return;
            }
        }
        staging.unmap();
        self.with_encoder(|enc| {
            enc.copy_buffer_to_buffer(&staging, 0, dst, offset, data.len() as u64)
        });
    }

    /// Read `bytes` bytes from byte `offset` of `src` (flushes and waits).
    pub fn read_bytes(
        &self,
        src: &wgpu::Buffer,
        offset: u64,
        bytes: u64,
    ) -> Result<Vec<u8>, BackendError> {
        if bytes == 0 {
            self.flush();
            self.wait()?;
            return Ok(Vec::new());
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("tern download"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.with_encoder(|enc| enc.copy_buffer_to_buffer(src, offset, &staging, 0, bytes));
        self.flush();
        let (tx, rx) = mpsc::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        let what = format!("a download of {bytes} bytes");
        let deadline = std::time::Instant::now() + self.timeout;
        self.wait_until(&what, deadline)?;
        // The mapping's callback runs inside a poll once the copy is done,
        // normally the wait above; poll on, within the same deadline.
        loop {
            match rx.try_recv() {
                Ok(Ok(())) => break,
                Ok(Err(e)) => {
                    return Err(self
                        .take_error()
                        .unwrap_or(self.lost(format!("map failed: {e}"))))
                }
                Err(mpsc::TryRecvError::Disconnected) => {
                    return Err(self
                        .take_error()
                        .unwrap_or(self.lost("the download never completed".into())))
                }
                Err(mpsc::TryRecvError::Empty) => {
                    if std::time::Instant::now() >= deadline {
                        return Err(self.stuck(Stuck {
                            what: format!("mapping {what}"),
                            after: self.timeout,
                        }));
                    }
                    self.wait_until(&what, deadline)?;
                    std::thread::yield_now();
                }
            }
        }
        let out = match staging.slice(..).get_mapped_range() {
            Ok(view) => view.to_vec(),
            Err(e) => return Err(self.lost(format!("download mapping: {e}"))),
        };
        staging.unmap();
        Ok(out)
    }

    /// Wait for all submitted work (within the timeout); reports
    /// asynchronous errors.
    pub fn wait(&self) -> Result<(), BackendError> {
        self.wait_until(
            "the submitted work (synchronize)",
            std::time::Instant::now() + self.timeout,
        )
    }

    /// Wait for all submitted work until `deadline`; `what` names the wait
    /// in the error when it runs out.
    fn wait_until(&self, what: &str, deadline: std::time::Instant) -> Result<(), BackendError> {
        let t = std::time::Instant::now();
        if let Some(e) = self.is_lost().then(|| self.take_error()).flatten() {
            return Err(e);
        }
        let r = self.device.poll(wgpu::PollType::Wait {
            submission_index: None,
            timeout: Some(deadline.saturating_duration_since(t)),
        });
        self.stat(|s| s.wait_s += t.elapsed().as_secs_f64());
        match r {
            Ok(_) => {}
            Err(wgpu::PollError::Timeout) => {
                return Err(self.stuck(Stuck {
                    what: what.to_string(),
                    after: self.timeout,
                }))
            }
            Err(e) => return Err(self.take_error().unwrap_or(self.lost(format!("{e}")))),
        }
        self.collect_timestamps();
        match self.take_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// A wait that ran out of time: the device's state is unknown, so it is
    /// treated as lost from here on (every later call reports this wait
    /// without waiting again), and the error names the wait.
    fn stuck(&self, e: Stuck) -> BackendError {
        self.stuck.store(true, std::sync::atomic::Ordering::Relaxed);
        let reason = self
            .lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(|| format!("{e}; tern treats the device as lost"))
            .clone();
        self.lost(reason)
    }

    /// Read the timestamps of finished submissions into the statistics.
    fn collect_timestamps(&self) {
        let Some(ts) = &self.ts else { return };
        let done: Vec<Readback> = {
            let mut pending = ts.pending.lock().unwrap_or_else(|p| p.into_inner());
            let (done, waiting) = pending
                .drain(..)
                .partition(|r| !matches!(r.mapped.try_recv(), Err(mpsc::TryRecvError::Empty)));
            *pending = waiting;
            done
        };
        // `partition` consumed each finished mapping's message; a buffer
        // whose mapping failed reads as unmapped and is skipped.
        for r in done {
            let ticks: Vec<u64> = match r.buf.slice(..).get_mapped_range() {
                Ok(view) => bytemuck::pod_collect_to_vec(&view),
                Err(_) => continue,
            };
            r.buf.unmap();
            let times = attribute(&ticks, &r.ids, ts.period_ns);
            self.stat(|s| {
                for (id, ns) in times {
                    let e = s.gpu.entry(id).or_default();
                    e.0 += ns;
                    e.1 += 1;
                }
            });
        }
    }

    /// The statistics (`TERN_WGPU_STATS`), on stderr.
    fn print_stats(&self) {
        let s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        eprintln!(
            "{}: {} dispatches, {} bind groups created, {} buffers created, {} submits; \
             host: recording {:.3} s, submitting {:.3} s, waiting {:.3} s",
            self.name(),
            s.dispatches,
            s.bind_group_misses,
            s.buffers_created,
            s.submits,
            s.record_s,
            s.submit_s,
            s.wait_s
        );
        let mut k: Vec<_> = s.kernels.iter().collect();
        k.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
        for (name, (t, n)) in k.iter().take(30) {
            eprintln!(
                "  {t:9.4} s {n:8} calls {:8.1} us/call  {name}",
                t / *n as f64 * 1e6
            );
        }
        if self.ts.is_some() {
            let names: HashMap<u32, String> = self
                .pipelines
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .map(|k| (k.id as u32, k.name.clone()))
                .collect();
            let total: f64 = s.gpu.values().map(|v| v.0).sum();
            let calls: u64 = s.gpu.values().map(|v| v.1).sum();
            eprintln!(
                "GPU time (timestamps): {:.3} ms over {calls} dispatches",
                total * 1e-6
            );
            let mut k: Vec<_> = s.gpu.iter().collect();
            k.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
            for (id, (ns, n)) in k.iter().take(30) {
                let name = names.get(id).map_or("?", String::as_str);
                eprintln!(
                    "  {:10.3} ms {n:8} calls {:9.2} us/call  {name}",
                    ns * 1e-6,
                    ns / *n as f64 * 1e-3
                );
            }
        }
    }

    // ---- recording ----------------------------------------------------------

    fn stat(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut self.stats.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn open(&self) -> Recording {
        Recording {
            encoder: self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("tern"),
                }),
            pass: None,
            params: Vec::new(),
            queries: Vec::new(),
        }
    }

    fn with_encoder(&self, f: impl FnOnce(&mut wgpu::CommandEncoder)) {
        let mut guard = self.rec.lock().unwrap_or_else(|p| p.into_inner());
        let rec = guard.get_or_insert_with(|| self.open());
        rec.pass = None; // end the open compute pass before a copy
        f(&mut rec.encoder);
    }

    /// Submit everything recorded so far.
    pub fn flush(&self) {
        let rec = self.rec.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut rec) = rec {
            let t = std::time::Instant::now();
            rec.pass = None;
            if !rec.params.is_empty() {
                self.queue.write_buffer(&self.param_buf, 0, &rec.params);
            }
            let readback = self.resolve_timestamps(&mut rec);
            self.queue.submit([rec.encoder.finish()]);
            if let (Some(ts), Some((buf, ids))) = (&self.ts, readback) {
                let (tx, mapped) = mpsc::channel();
                buf.slice(..).map_async(wgpu::MapMode::Read, move |r| {
                    let _ = tx.send(r);
                });
                ts.pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Readback { buf, ids, mapped });
            }
            self.stat(|s| {
                s.submits += 1;
                s.submit_s += t.elapsed().as_secs_f64();
            });
        }
    }

    /// Record the resolve of `rec`'s timestamps into a readback buffer
    /// (`TERN_WGPU_STATS=timestamps`); the buffer and the kernel id of each
    /// query, for mapping once submitted.
    fn resolve_timestamps(&self, rec: &mut Recording) -> Option<(wgpu::Buffer, Vec<u32>)> {
        let ts = self.ts.as_ref()?;
        if rec.queries.is_empty() {
            return None;
        }
        let n = rec.queries.len() as u32;
        let bytes = n as u64 * wgpu::QUERY_SIZE as u64;
        rec.encoder.resolve_query_set(&ts.set, 0..n, &ts.resolve, 0);
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("tern timestamps readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        rec.encoder
            .copy_buffer_to_buffer(&ts.resolve, 0, &buf, 0, bytes);
        Some((buf, std::mem::take(&mut rec.queries)))
    }

    /// The compute pipeline for `src` (cached under `key`). The shader's
    /// entry point is `main`; its bind group 0 holds the parameters at
    /// binding 0 (uniform) and the storage buffers at bindings 1.. in the
    /// order the op passes them; the layout is read from the module naga
    /// parses ([`crate::shader::reflect`]).
    pub fn pipeline(&self, key: &str, src: impl FnOnce() -> String) -> Arc<Kernel> {
        let mut cache = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = cache.get(key) {
            return p.clone();
        }
        let code = crate::shader::finish(src(), self.f16);
        // The sources are tern's own (snapshotted and validated by the
        // crate's tests), so a shader naga cannot read is a bug in tern.
        let shape = crate::shader::reflect(&code)
            .unwrap_or_else(|e| panic!("kernel {key}: invalid WGSL: {e}"));
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(key),
                source: wgpu::ShaderSource::Wgsl(code.as_str().into()),
            });
        // An explicit layout: the parameter slot is a dynamic offset into the
        // arena, so a bind group can be reused across dispatches and tokens.
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: true,
                min_binding_size: None,
            },
            count: None,
        }];
        for &(binding, read_only) in &shape.storage {
            entries.push(wgpu::BindGroupLayoutEntry {
                binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            });
        }
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(key),
                entries: &entries,
            });
        let pl = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(key),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(key),
                layout: Some(&pl),
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            });
        let k = Arc::new(Kernel {
            pipeline,
            name: key.to_string(),
            layout,
            id: cache.len(),
            params_size: shape.params_size,
        });
        cache.insert(key.to_string(), k.clone());
        k
    }

    /// Record one dispatch of `k` with the uniform parameters `params` (the
    /// `#[repr(C)]` mirror of the kernel's WGSL `struct P`) and the storage
    /// `views` at bindings 1.. .
    pub fn dispatch<T: bytemuck::Pod>(
        &self,
        k: &Kernel,
        params: &T,
        views: &[View<'_>],
        groups: [u32; 3],
    ) {
        assert_eq!(
            std::mem::size_of::<T>(),
            k.params_size as usize,
            "kernel {}: the parameter struct {} does not match the WGSL struct",
            k.name,
            std::any::type_name::<T>()
        );
        if groups.contains(&0) {
            return;
        }
        let t = std::time::Instant::now();
        let max = self.limits.max_compute_workgroups_per_dimension;
        assert!(
            groups.iter().all(|&g| g <= max),
            "dispatch {groups:?} exceeds {max} workgroups per dimension"
        );
        let params = bytemuck::bytes_of(params);
        assert!(params.len() <= SLOT as usize, "too many parameters");
        let mut guard = self.rec.lock().unwrap_or_else(|p| p.into_inner());
        // Full: the parameter arena, or (timestamps) the query set, which
        // needs room for a pass start and this dispatch.
        if guard.as_ref().is_some_and(|r| {
            r.params.len() as u64 + SLOT > SLOT * SLOTS || r.queries.len() as u32 + 2 > QUERIES
        }) {
            drop(guard);
            self.flush();
            guard = self.rec.lock().unwrap_or_else(|p| p.into_inner());
        }
        let rec = guard.get_or_insert_with(|| self.open());
        let slot = rec.params.len() as u32;
        rec.params.extend_from_slice(params);
        rec.params.resize(slot as usize + SLOT as usize, 0);
        let bg = self.bind_group(k, views);
        if rec.pass.is_none() {
            let pass = rec
                .encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: None,
                    timestamp_writes: None,
                })
                .forget_lifetime();
            rec.pass = Some(pass);
            if let (Some(ts), Some(pass)) = (&self.ts, rec.pass.as_mut()) {
                pass.write_timestamp(&ts.set, rec.queries.len() as u32);
                rec.queries.push(PASS_START);
            }
        }
        let pass = rec.pass.as_mut().expect("open pass");
        pass.set_pipeline(&k.pipeline);
        pass.set_bind_group(0, &bg, &[slot]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        if let Some(ts) = &self.ts {
            pass.write_timestamp(&ts.set, rec.queries.len() as u32);
            rec.queries.push(k.id as u32);
        }
        let submit = rec.params.len() as u64 >= SLOT * self.submit_every;
        drop(guard);
        if submit {
            self.flush();
        }
        self.stat(|s| {
            s.dispatches += 1;
            s.record_s += t.elapsed().as_secs_f64();
        });
        if self.mode == StatsMode::Profile {
            let t = std::time::Instant::now();
            self.flush();
            let _ = self.wait();
            let dt = t.elapsed().as_secs_f64();
            self.stat(|s| {
                let e = s.kernels.entry(k.name.clone()).or_default();
                e.0 += dt;
                e.1 += 1;
            });
        }
    }

    /// The bind group of `views` for `k`, from the cache when the same
    /// buffers and ranges were bound before (decode binds the same buffers
    /// every token). Entries holding a dropped buffer are purged first, so
    /// the cache never keeps freed memory alive for long.
    fn bind_group(&self, k: &Kernel, views: &[View<'_>]) -> wgpu::BindGroup {
        let key = BindKey {
            kernel: k.id,
            views: views
                .iter()
                .map(|v| (v.buf.clone(), v.offset, v.size))
                .collect(),
        };
        let mut cache = self.bind_groups.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut dropped = self.dropped.lock().unwrap_or_else(|p| p.into_inner());
            if !dropped.is_empty() {
                cache.retain(|key, _| !key.views.iter().any(|(b, _, _)| dropped.contains(b)));
                dropped.clear();
            }
        }
        if let Some(bg) = cache.get(&key) {
            return bg.clone();
        }
        if cache.len() >= BIND_GROUP_CACHE {
            cache.clear();
        }
        self.stat(|s| s.bind_group_misses += 1);
        let mut entries = Vec::with_capacity(views.len() + 1);
        entries.push(wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &self.param_buf,
                offset: 0,
                size: std::num::NonZeroU64::new(SLOT),
            }),
        });
        for (i, v) in views.iter().enumerate() {
            debug_assert!(v.offset % self.align == 0 && v.size <= self.max_binding);
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: v.buf,
                    offset: v.offset,
                    size: std::num::NonZeroU64::new(v.size),
                }),
            });
        }
        let bg = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &k.layout,
            entries: &entries,
        });
        cache.insert(key, bg.clone());
        bg
    }

    // ---- windows --------------------------------------------------------------

    /// Largest number of 4-byte elements one window may cover, leaving room
    /// for an unaligned start.
    pub fn window_elems(&self) -> usize {
        ((self.max_binding - self.align) / 4) as usize
    }

    /// A binding over elements `[start, start + n)` of `buf` (4-byte
    /// elements): the view starts at the aligned offset at or below `start`,
    /// and the returned shift is `start` minus the view's first element.
    /// `n` must not exceed [`Ctx::window_elems`].
    pub fn view<'a>(&self, buf: &'a wgpu::Buffer, start: usize, n: usize) -> (View<'a>, u32) {
        assert!(
            n <= self.window_elems(),
            "view of {n} elements exceeds a window"
        );
        let byte = start as u64 * 4;
        let base = byte - byte % self.align;
        if base >= buf.size() {
            // only the stand-in of a scratch buffer the device could not
            // provide (`scratch_or_defer`): bind all of it; the error is
            // reported by the next download
            let size = buf.size().min(self.max_binding);
            return (
                View {
                    buf,
                    offset: 0,
                    size,
                },
                0,
            );
        }
        let shift = ((byte - base) / 4) as u32;
        let size = ((shift as u64 + n.max(1) as u64) * 4).min(buf.size() - base);
        (
            View {
                buf,
                offset: base,
                size,
            },
            shift,
        )
    }

    /// Workgroup grid for `groups` workgroups (2-D when more than the
    /// per-dimension limit); kernels linearize with `wg.y * nwg.x + wg.x`.
    pub fn grid(&self, groups: u32) -> [u32; 3] {
        let max = self.limits.max_compute_workgroups_per_dimension;
        if groups <= max {
            [groups, 1, 1]
        } else {
            let y = groups.div_ceil(max);
            [groups.div_ceil(y), y, 1]
        }
    }
}

/// Every adapter wgpu can see, one line each (`tern info`). An enumeration
/// stuck in the driver past `TERN_WGPU_TIMEOUT` (or an invalid value of it)
/// gives one line saying so instead.
pub fn list_adapters() -> Vec<String> {
    let timeout = match watchdog::timeout_from_env() {
        Ok(t) => t,
        Err(e) => return vec![e],
    };
    let listed = watchdog::on_helper_thread("adapter enumeration", timeout, || {
        let _one_at_a_time = OPENING.lock().unwrap_or_else(|p| p.into_inner());
        pollster::block_on(instance().enumerate_adapters(desc_backends()))
            .iter()
            .map(|a| {
                let i = a.get_info();
                format!(
                    "{} ({:?}, {:?}, driver {} {})",
                    i.name, i.backend, i.device_type, i.driver, i.driver_info
                )
            })
            .collect()
    });
    listed.unwrap_or_else(|e| vec![e.to_string()])
}

fn desc_backends() -> wgpu::Backends {
    wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_backend::{Backend, Gemm};

    /// The software adapter with `mode`, or `None` (reported) without one.
    fn device(mode: StatsMode) -> Option<crate::Wgpu> {
        let opts = WgpuOptions {
            force_fallback: std::env::var_os("TERN_WGPU_ADAPTER").is_none(),
            adapter: std::env::var("TERN_WGPU_ADAPTER").ok(),
            ..Default::default()
        };
        match Ctx::with_settings(&opts, mode, watchdog::DEFAULT_TIMEOUT) {
            Ok(ctx) => Some(crate::Wgpu { ctx }),
            Err(e) => {
                tern_backend::conformance::missing(format_args!("wgpu test: {e}"));
                None
            }
        }
    }

    #[test]
    fn stats_modes_parse() {
        assert_eq!(StatsMode::parse(None), StatsMode::Off);
        assert_eq!(StatsMode::parse(Some("1")), StatsMode::Counters);
        assert_eq!(StatsMode::parse(Some("")), StatsMode::Counters);
        assert_eq!(StatsMode::parse(Some("profile")), StatsMode::Profile);
        assert_eq!(StatsMode::parse(Some("timestamps")), StatsMode::Timestamps);
    }

    #[test]
    fn each_dispatch_gets_the_ticks_since_the_timestamp_before_it() {
        // pass 1: start, kernel 3, kernel 5; pass 2: start, kernel 3
        let ticks = [100, 150, 400, 1000, 1010];
        let ids = [PASS_START, 3, 5, PASS_START, 3];
        assert_eq!(
            attribute(&ticks, &ids, 2.0),
            [(3, 100.0), (5, 500.0), (3, 20.0)]
        );
        // a counter that went backwards counts as zero, not as 2^64 ticks
        assert_eq!(attribute(&[50, 10], &[PASS_START, 1], 1.0), [(1, 0.0)]);
        assert!(attribute(&[], &[], 1.0).is_empty());
    }

    #[test]
    fn timestamps_time_every_dispatch_by_kernel() {
        let Some(b) = device(StatsMode::Timestamps) else {
            return;
        };
        if b.ctx.ts.is_none() {
            tern_backend::conformance::missing(format_args!(
                "{}: no timestamp queries inside passes",
                b.ctx.name()
            ));
            return;
        }
        let mut x = b.upload(&[1.0; 4096]).unwrap();
        for _ in 0..5 {
            b.scale(0.5, &mut x);
        }
        // a copy in between ends the pass: the next dispatch opens another
        b.write(&mut x, 0, &[2.0]);
        b.scale(2.0, &mut x);
        let y = b.download(&x).unwrap();
        assert_eq!((y[0], y[1]), (4.0, 1.0 / 16.0));
        let s = b.ctx.stats.lock().unwrap();
        let calls: u64 = s.gpu.values().map(|v| v.1).sum();
        assert_eq!(calls, s.dispatches, "every dispatch timed once");
        assert!(s.gpu.values().map(|v| v.0).sum::<f64>() > 0.0);
        let names: Vec<String> = b
            .ctx
            .pipelines
            .lock()
            .unwrap()
            .values()
            .filter(|k| s.gpu.contains_key(&(k.id as u32)))
            .map(|k| k.name.clone())
            .collect();
        assert!(!names.is_empty() && names.len() == s.gpu.len(), "{names:?}");
    }

    #[test]
    fn without_timestamps_nothing_is_queried() {
        let Some(b) = device(StatsMode::Counters) else {
            return;
        };
        assert!(b.ctx.ts.is_none());
        let mut x = b.upload(&[1.0; 64]).unwrap();
        b.scale(3.0, &mut x);
        let rec = b.ctx.rec.lock().unwrap();
        assert!(rec.as_ref().is_some_and(|r| r.queries.is_empty()));
    }

    #[test]
    fn a_wait_past_the_timeout_is_an_error_naming_it() {
        let Some(mut b) = device(StatsMode::Off) else {
            return;
        };
        let n = 1024;
        let a = b.upload(&vec![0.5; n * n]).unwrap();
        let mut c = b.zeros(n * n).unwrap();
        // about 2 GFLOP: far more than a millisecond on any device
        for _ in 0..4 {
            b.matmul(&a, &a, &mut c, Gemm::new(n, n, n));
        }
        b.ctx.timeout = Duration::from_millis(1);
        let e = b.download(&c).expect_err("a 1 ms limit must run out");
        let msg = e.to_string();
        assert!(
            matches!(e, BackendError::DeviceLost { .. })
                && msg.contains(&format!("did not finish a download of {} bytes", n * n * 4))
                && msg.contains("within 0.001 s")
                && msg.contains("TERN_WGPU_TIMEOUT"),
            "{msg}"
        );
        // sticky, and without waiting again
        let t = std::time::Instant::now();
        let again = b.synchronize().expect_err("the device stays lost");
        assert!(again.to_string().contains("a download of"), "{again}");
        assert!(t.elapsed() < Duration::from_secs(1));
        // dropping waits (bounded) for the work still running
        b.ctx.timeout = watchdog::DEFAULT_TIMEOUT;
    }
}
