//! tern-io: GGUF v3 and safetensors files, read through memory maps and
//! written as streams.
