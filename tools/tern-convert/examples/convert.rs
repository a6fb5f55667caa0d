//! Convert a Hugging Face BitNet checkpoint folder to GGUF with the library.
//!
//! ```sh
//! cargo run -p tern-convert --example convert                       # a generated tiny checkpoint
//! cargo run -p tern-convert --example convert -- CHECKPOINT OUT.gguf  # a folder of your own
//! ```
//!
//! Without arguments it writes a random checkpoint of a tiny config (256
//! hidden, one layer, BF16 safetensors, as `tern_convert::gen` makes them for
//! the benchmarks) into a temporary folder and converts that. Then it reads
//! the GGUF file back and lists its tensors.

use std::error::Error;
use std::path::PathBuf;

use tern_convert::gen::{write_random_checkpoint, GenDtype};
use tern_convert::{convert, ConvertOptions, Input};
use tern_io::gguf::GgufFile;
use tern_model::BitNetConfig;

const TINY: &str = r#"{"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 1,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128,
    "hidden_act": "silu", "tie_word_embeddings": true}"#;

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tmp = tempfile::tempdir()?;
    let (checkpoint, out) = match args.as_slice() {
        [] => {
            let cfg = BitNetConfig::from_json_str("tiny example config", TINY)?;
            let dir = tmp.path().join("checkpoint");
            let (files, bytes) = write_random_checkpoint(&cfg, GenDtype::BF16, 7, &dir, |_, _| {})?;
            println!(
                "wrote a random checkpoint: {} files, {bytes} bytes of tensors",
                files.len()
            );
            (dir, tmp.path().join("tiny.gguf"))
        }
        [checkpoint, out] => (PathBuf::from(checkpoint), PathBuf::from(out)),
        _ => return Err("usage: convert [CHECKPOINT_DIR OUT.gguf]".into()),
    };

    let mut opts = ConvertOptions::new(Input::Dir(checkpoint), &out);
    opts.progress = true;
    let report = convert(&opts)?;
    print!("{}", report.summary());

    let gguf = GgufFile::open(&out)?;
    println!(
        "{}: architecture {}, {} tensors",
        out.display(),
        gguf.get_str("general.architecture")?,
        gguf.tensors().len()
    );
    for t in gguf.tensors() {
        println!("  {:<28} {:<6} {:?}", t.name, t.ty.name(), t.ne);
    }
    Ok(())
}
