//! WGSL sources: tern's preprocessor, the shared WGSL modules, and what naga
//! reads off a final shader (its bindings and the size of its parameter
//! struct).
//!
//! The preprocessor, in order:
//! 1. `//#include NAME` lines are replaced by the module `NAME` of
//!    [`MODULES`] (recursively; a module included twice into one shader is
//!    a programming error). The line is a WGSL comment, so a source without
//!    other directives stays valid WGSL.
//! 2. `#ifdef NAME` / `#ifndef NAME` ... `#endif` keep or drop the lines
//!    between them (no nesting) by the defines the kernel is built with.
//! 3. `{{KEY}}` slots are replaced by the text the kernel's code generator
//!    wrote for them (sizes, unrolled micro-tiles).
//!
//! The bind group layout of a kernel is derived from the parsed module
//! ([`reflect`]): the uniform parameter struct at binding 0 and every storage
//! buffer with its access mode, so the layout cannot disagree with the
//! source.

use wgpu::naga;

/// Modules a shader may include with `//#include NAME`.
pub(crate) const MODULES: &[(&str, &str)] = &[
    ("exact", include_str!("shaders/exact.wgsl")),
    (
        "attention_common",
        include_str!("shaders/attention_common.wgsl"),
    ),
    ("gemm_params", include_str!("shaders/gemm_params.wgsl")),
    ("rope_phase", include_str!("shaders/rope_phase.wgsl")),
    ("tree_sum", include_str!("shaders/tree_sum.wgsl")),
    ("ternary_dot", include_str!("shaders/ternary_dot.wgsl")),
    ("softmax_row", include_str!("shaders/softmax_row.wgsl")),
    (
        "ternary_product_params",
        include_str!("shaders/ternary_product_params.wgsl"),
    ),
    (
        "ternary_float_params",
        include_str!("shaders/ternary_float_params.wgsl"),
    ),
];

fn module(name: &str) -> &'static str {
    MODULES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, src)| *src)
        .unwrap_or_else(|| panic!("WGSL include: no module named {name:?}"))
}

/// `src` with every `//#include NAME` line replaced by its module.
fn expand(src: &str, seen: &mut Vec<String>, out: &mut String) {
    for line in src.lines() {
        if let Some(name) = line.trim().strip_prefix("//#include ") {
            let name = name.trim();
            assert!(
                !seen.iter().any(|s| s == name),
                "WGSL include: module {name:?} included twice"
            );
            seen.push(name.to_string());
            expand(module(name), seen, out);
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
}

/// The final WGSL of a kernel: includes expanded, then `#ifdef` blocks kept
/// for the names in `defs`, then `{{KEY}}` replaced by the value of `KEY` in
/// `subs`.
pub(crate) fn preprocess(src: &str, defs: &[&str], subs: &[(&str, String)]) -> String {
    let mut full = String::with_capacity(src.len());
    expand(src, &mut Vec::new(), &mut full);
    let mut out = String::with_capacity(full.len());
    let mut keep = true;
    for line in full.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("#ifdef ") {
            keep = defs.contains(&name.trim());
            continue;
        }
        if let Some(name) = t.strip_prefix("#ifndef ") {
            keep = !defs.contains(&name.trim());
            continue;
        }
        if t == "#endif" {
            keep = true;
            continue;
        }
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    for (k, v) in subs {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    out
}

/// The code the device compiles: `enable f16;` first on an adapter with
/// SHADER_F16 (the f16 kernels need it; it changes nothing else).
pub(crate) fn finish(code: String, f16: bool) -> String {
    if f16 {
        format!("enable f16;\n{code}")
    } else {
        code
    }
}

/// `defs` and, when the device's kernels use subgroup operations
/// (`Ctx::sg`), `SG`: the define that selects their subgroup code.
pub(crate) fn with_sg<'a>(defs: &[&'a str], sg: bool) -> Vec<&'a str> {
    let mut v = defs.to_vec();
    if sg {
        v.push("SG");
    }
    v
}

/// What the bind group layout of a kernel needs from its parsed module.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Reflection {
    /// `(binding, read_only)` of every storage buffer of group 0, by binding.
    pub storage: Vec<(u32, bool)>,
    /// Bytes of the uniform parameter struct at binding 0 (naga's layout).
    pub params_size: u32,
}

/// Parse `code` with naga and read its group-0 bindings: exactly one uniform
/// (the parameters, binding 0) and storage buffers at the other bindings.
/// The error is naga's diagnostic, or what breaks that convention.
pub(crate) fn reflect(code: &str) -> Result<Reflection, String> {
    let module = naga::front::wgsl::parse_str(code).map_err(|e| e.emit_to_string(code))?;
    let mut layouter = naga::proc::Layouter::default();
    layouter
        .update(module.to_ctx())
        .map_err(|e| format!("layout: {e}"))?;
    let mut storage = Vec::new();
    let mut params_size = None;
    for (_, var) in module.global_variables.iter() {
        let Some(rb) = &var.binding else { continue };
        let name = var.name.as_deref().unwrap_or("?");
        if rb.group != 0 {
            return Err(format!(
                "{name}: group {} (only group 0 is bound)",
                rb.group
            ));
        }
        match var.space {
            naga::AddressSpace::Uniform => {
                if rb.binding != 0 || params_size.is_some() {
                    return Err(format!(
                        "{name}: the one uniform (the parameters) must be binding 0, \
                         found binding {}",
                        rb.binding
                    ));
                }
                params_size = Some(layouter[var.ty].size);
            }
            naga::AddressSpace::Storage { access } => {
                if rb.binding == 0 {
                    return Err(format!("{name}: binding 0 is the parameters"));
                }
                storage.push((rb.binding, !access.contains(naga::StorageAccess::STORE)));
            }
            other => return Err(format!("{name}: unexpected address space {other:?}")),
        }
    }
    storage.sort_unstable();
    Ok(Reflection {
        storage,
        params_size: params_size.ok_or("no uniform parameter struct at binding 0")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn includes_defines_and_slots() {
        let src = "//#include exact\n#ifdef A\nconst WITH_A = {{N}}u;\n#endif\n\
                   #ifndef A\nconst WITHOUT_A = 0u;\n#endif\n";
        let with_a = preprocess(src, &["A"], &[("N", "7".into())]);
        assert!(with_a.starts_with(module("exact")));
        assert!(with_a.ends_with("const WITH_A = 7u;\n") && !with_a.contains("WITHOUT_A"));
        let without = preprocess(src, &[], &[("N", "7".into())]);
        assert!(without.ends_with("const WITHOUT_A = 0u;\n") && !without.contains("WITH_A ="));
    }

    #[test]
    #[should_panic(expected = "included twice")]
    fn a_module_included_twice_is_refused() {
        preprocess("//#include exact\n//#include exact\n", &[], &[]);
    }

    #[test]
    #[should_panic(expected = "no module named")]
    fn an_unknown_module_is_refused() {
        preprocess("//#include nothing\n", &[], &[]);
    }

    #[test]
    fn bindings_come_from_the_parsed_module() {
        // a commented-out declaration and an access mode written across
        // lines: a text scan would misread both
        let code = "struct P { n: u32, x: f32, v: vec4<u32> }\n\
            @group(0) @binding(0) var<uniform> p: P;\n\
            // @group(0) @binding(4) var<storage, read_write> gone: array<f32>;\n\
            @group(0) @binding(2) var<storage,\n read_write> y: array<f32>;\n\
            @group(0) @binding(1) var<storage> x: array<f32>;\n\
            @compute @workgroup_size(1) fn main() { y[0] = x[0] + f32(p.n); }\n";
        let r = reflect(code).unwrap();
        assert_eq!(r.storage, vec![(1, true), (2, false)]);
        // u32, f32, then a vec4 aligned to 16: 32 bytes
        assert_eq!(r.params_size, 32);
    }

    #[test]
    fn a_second_uniform_or_a_parse_error_is_reported() {
        let two = "struct P { n: u32 }\n\
            @group(0) @binding(0) var<uniform> p: P;\n\
            @group(0) @binding(1) var<uniform> q: P;\n\
            @compute @workgroup_size(1) fn main() { let a = p.n + q.n; }\n";
        assert!(reflect(two).unwrap_err().contains("binding 0"));
        assert!(reflect("fn main( {").is_err());
    }
}
