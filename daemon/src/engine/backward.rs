//! Backpropagation from several tensors at once, each with its own output gradient
//! (`torch.autograd.backward(roots, grads)`): the objective writes ∂L/∂F out for each tapped
//! activation F (module [`objective`](super::objective)), so autograd only carries those
//! through the network. Builds with the C++ shim (cpp/backward.cpp, `cfg(autograd_backward)`,
//! every Linux build) call libtorch's engine directly; elsewhere the same gradients come from
//! the scalar `Σ ⟨root, stop(grad)⟩` ([`through_scalar`]), at a few more operators per root.

use tch::{Kind, Tensor};

/// `f` with autograd off, back on however `f` ends: `tch::no_grad` leaves it off when `f`
/// panics (a failed graph capture, a CUDA error caught per job), and every evaluation after would
/// have no gradient.
pub fn no_grad<T>(f: impl FnOnce() -> T) -> T {
    let _restored_on_drop = tch::no_grad_guard();
    f()
}

/// Accumulates into the leaves' `.grad` the gradient that flows back from `roots`, each root
/// receiving its paired gradient (same shape; cast to the root's kind if it differs). Panics
/// with libtorch's message if the backward pass fails (out of memory, say), as tch's own
/// `backward` does: a job catches it.
pub fn backward(roots: &[(Tensor, Tensor)]) {
    if !roots.is_empty() && !through_libtorch(roots) {
        through_scalar(roots);
    }
}

/// The same backward pass through one scalar, `Σ ⟨root, stop(grad)⟩`, whose gradient with
/// respect to each root is its `grad`: for builds without the shim (and to test it against).
pub fn through_scalar(roots: &[(Tensor, Tensor)]) {
    let parts: Vec<Tensor> = roots.iter().map(|(r, g)| (r * g.detach()).sum(Kind::Float)).collect();
    if !parts.is_empty() {
        Tensor::stack(&parts, 0).sum(Kind::Float).backward();
    }
}

/// libtorch's `torch::autograd::backward(roots, grads)` through the shim; false where this build
/// has none.
#[cfg(autograd_backward)]
fn through_libtorch(roots: &[(Tensor, Tensor)]) -> bool {
    use std::ffi::{c_char, c_int, c_void, CStr};
    extern "C" {
        fn ns_backward(roots: *const *const c_void, grads: *const *const c_void, n: c_int) -> *const c_char;
    }
    let ptr = |t: &Tensor| t.as_ptr() as *const c_void;
    let r: Vec<_> = roots.iter().map(|(r, _)| ptr(r)).collect();
    let g: Vec<_> = roots.iter().map(|(_, g)| ptr(g)).collect();
    let n = c_int::try_from(roots.len()).expect("a few roots");
    // SAFETY: the pointers are live at::Tensor handles owned by `roots` for the whole call; the
    // shim catches every C++ exception
    let error = unsafe { ns_backward(r.as_ptr(), g.as_ptr(), n) };
    if !error.is_null() {
        // SAFETY: a NUL-terminated message the shim keeps until its next call on this thread
        let message = unsafe { CStr::from_ptr(error) }.to_string_lossy().into_owned();
        panic!("backward pass failed: {message}");
    }
    true
}

#[cfg(not(autograd_backward))]
fn through_libtorch(_roots: &[(Tensor, Tensor)]) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;

    /// x → (a channels-last bf16 view, an f32 product, a scalar): roots of every kind the
    /// objective uses, sharing x.
    fn roots(x: &Tensor) -> Vec<(Tensor, Tensor)> {
        let a = (x * 2.0).to_kind(Kind::BFloat16).permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
        assert_eq!(a.stride()[1], 1, "channels-last");
        let b = x.sin() * x;
        let c = x.square().sum(Kind::Float);
        let ga = Tensor::randn(a.size(), (Kind::Float, Device::Cpu));
        let gb = Tensor::randn(b.size(), (Kind::Float, Device::Cpu));
        let gc = Tensor::from(0.5f32);
        vec![(a, ga), (b, gb), (c, gc)]
    }

    #[test]
    fn gradients_of_several_roots_add_up_as_autograd_makes_them() {
        #[allow(clippy::assertions_on_constants)] // (a property of the build, checked where it runs)
        {
            assert!(cfg!(autograd_backward), "this build has the shim (else both sides below are the scalar)");
        }
        tch::manual_seed(5);
        let x = Tensor::randn([1, 3, 4, 5], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let r = roots(&x);
        backward(&r);
        let direct = x.grad().copy();
        let _ = x.grad().zero_();
        through_scalar(&roots_with_same_grads(&x, &r));
        assert!(direct.allclose(&x.grad(), 1e-5, 1e-6, false), "{direct} vs {}", x.grad());
        // and by hand: d/dx of ⟨2x, ga⟩ (bf16 on the way), ⟨x sin x, gb⟩, ½‖x‖²
        let (ga, gb) = (r[0].1.to_kind(Kind::BFloat16).to_kind(Kind::Float), &r[1].1);
        let by_hand = ga * 2.0 + gb * (x.sin() + &x * x.cos()) + &x * 1.0;
        assert!(direct.allclose(&by_hand.detach(), 1e-2, 1e-2, false));
        assert!(direct.abs().sum(Kind::Float).double_value(&[]) > 1.0);
    }

    fn roots_with_same_grads(x: &Tensor, like: &[(Tensor, Tensor)]) -> Vec<(Tensor, Tensor)> {
        roots(x).into_iter().zip(like).map(|((r, _), (_, g))| (r, g.shallow_clone())).collect()
    }

    #[test]
    fn no_roots_is_no_pass() {
        backward(&[]);
        through_scalar(&[]);
    }

    /// A panic inside [`super::no_grad`] (as in a graph capture that fails) leaves autograd on:
    /// the evaluations after it still have gradients. (`tch::no_grad` left it off.)
    #[test]
    fn autograd_is_on_again_after_a_panic_without_gradients() {
        let caught = std::panic::catch_unwind(|| super::no_grad(|| panic!("a capture failed")));
        assert!(caught.is_err());
        let x = Tensor::ones([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let y = (&x * 2.0).sum(Kind::Float);
        assert!(y.requires_grad(), "autograd is off after the panic");
        y.backward();
        assert_eq!(Vec::<f32>::try_from(x.grad()).unwrap(), vec![2.0; 3]);
    }
}
