//! `--backend cpu|wgpu`: which device runs the ops, and a way to run a
//! command body generic over the chosen [`Backend`].

use anyhow::{Context, Result};
use tern_backend::{Backend, Cpu};
use tern_model::weights::WeightSource;
use tern_model::{HeadPrecision, Model};
use tern_wgpu::{Wgpu, WgpuOptions};

/// Where the ops run.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// The host CPU (all cores unless --threads).
    #[default]
    Cpu,
    /// A GPU through wgpu: Vulkan, Metal or DX12 (Mesa lavapipe without a GPU).
    Wgpu,
}

/// Backend flags shared by the commands that run a model.
#[derive(clap::Args, Debug, Clone)]
pub struct BackendArgs {
    /// Where the ops run: cpu, or wgpu (any Vulkan/Metal/DX12 GPU).
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    pub backend: BackendKind,
    /// CPU threads (default: all cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// wgpu: use the adapter whose name contains this text (`tern info` lists them).
    #[arg(long)]
    pub gpu: Option<String>,
}

/// `--head` values.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadArg {
    /// f32: exact parity with transformers, llama.cpp and PEFT.
    F32,
    /// IEEE f16 (nearest, ties to even), f32 accumulation.
    F16,
}

impl From<HeadArg> for HeadPrecision {
    fn from(h: HeadArg) -> Self {
        match h {
            HeadArg::F32 => HeadPrecision::F32,
            HeadArg::F16 => HeadPrecision::F16,
        }
    }
}

/// `--head`, for the commands that load a model for inference or LoRA.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct HeadArgs {
    /// Storage of the token embedding and the LM head (one table when tied):
    /// f16 halves their memory and the bytes read per decoded token
    /// (default on wgpu); f32 keeps exact parity with transformers,
    /// llama.cpp and PEFT (default on the CPU).
    #[arg(long, value_enum)]
    pub head: Option<HeadArg>,
}

impl HeadArgs {
    /// The precision asked for, else the backend's default.
    pub fn precision<B: Backend>(&self, backend: &B) -> HeadPrecision {
        self.head
            .map_or_else(|| HeadPrecision::default_for(backend), Into::into)
    }

    /// Load `src` (the model `name`) onto `backend` with this head.
    pub fn load<B: Backend>(
        &self,
        backend: B,
        src: &dyn WeightSource,
        name: &str,
    ) -> Result<Model<B>> {
        let head = self.precision(&backend);
        Model::load_with_head(backend, src, head).with_context(|| {
            format!(
                "loading model {name} with the embedding and head in {}",
                head.name()
            )
        })
    }
}

/// A command body that works on any backend.
pub trait Job {
    type Out;
    fn run<B: Backend + 'static>(self, backend: B) -> Result<Self::Out>;
}

impl BackendArgs {
    /// Open the chosen backend (printing what it is) and run `job` on it.
    pub fn run<J: Job>(&self, job: J) -> Result<J::Out> {
        match self.backend {
            BackendKind::Cpu => job.run(match self.threads {
                Some(n) => Cpu::with_threads(n),
                None => Cpu::new(),
            }),
            BackendKind::Wgpu => {
                let b = open_wgpu(self.gpu.clone())?;
                eprintln!("{}", adapter_line(&b));
                job.run(b)
            }
        }
    }
}

/// The wgpu backend on the named (or best) adapter.
pub fn open_wgpu(adapter: Option<String>) -> Result<Wgpu> {
    Wgpu::with_options(&WgpuOptions {
        adapter,
        ..Default::default()
    })
    .map_err(|e| anyhow::anyhow!("--backend wgpu: {e}"))
}

/// One line naming the adapter and the limits that matter to tern.
pub fn adapter_line(b: &Wgpu) -> String {
    let r = b.report();
    format!(
        "wgpu adapter: {} ({}, {}, driver {} {}); subgroup {}..{}, storage binding {} MiB, \
         buffer {} MiB, workgroup memory {} KiB, f16 {}",
        r.name,
        r.backend,
        r.device_type,
        r.driver,
        r.driver_info,
        r.subgroup_min,
        r.subgroup_max,
        r.max_storage_binding >> 20,
        r.max_buffer >> 20,
        r.max_workgroup_storage >> 10,
        if r.shader_f16 { "yes" } else { "no" }
    )
}

/// Peak resident memory of this process (Linux `VmHWM`), in bytes.
pub fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
