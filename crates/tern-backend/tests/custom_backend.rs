//! The whole conformance suite on the custom backend of
//! `examples/custom_backend.rs` (a decorator over the CPU backend that
//! counts ops): a new implementation proves it honours the contract the same
//! way.

#[path = "../examples/custom_backend.rs"]
#[allow(dead_code)]
mod example;

use example::Counting;
use tern_backend::{Backend, Cpu};

tern_backend::conformance_tests!(Counting::new(Cpu::with_threads(2)));

#[test]
fn the_decorator_sees_every_op_it_delegates() {
    let b = Counting::new(Cpu::new());
    tern_backend::conformance::matmul_reference(&b);
    let counts = b.counts();
    assert!(counts["matmul"] > 0, "{counts:?}");
    assert!(b.name().starts_with("counting over cpu"));
}
