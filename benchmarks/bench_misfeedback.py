"""Which misfeedback form to train with: does it stay bounded, and what does it do?

Student logits (one free ``[V]`` vector per position) are optimised with Adam
against ClassKD's student objective, KD to the teacher plus ``weight`` times a
misfeedback variant, for every variant. The teacher is random; the classmate
is a weaker model that half agrees with it (its logits are 0.5 * teacher +
0.5 * noise). Reported after ``--steps`` steps: the objective, the misfeedback
term and its minimum over training, the largest gradient norm seen, the
student's KL(p || q) to the teacher and its KL(q || c) from the classmate, and
whether everything stayed finite. ``none`` is KD alone.

  python benchmarks/bench_misfeedback.py [--steps 500 --weight 1.0 --kd reverse_kl]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax

from classkd_jax import losses as L


def run(variant, teacher, classmate, init, *, kd, weight, steps, lr, seed):
    mask = jnp.ones(teacher.shape[:-1])
    opt = optax.adam(lr)

    def objective(logits, key):
        kd_term = L.distillation_loss(logits, teacher, mask, divergence=kd)
        if variant == "none":
            return kd_term, jnp.zeros(())
        # The sampled tokens (for "sigmoid") are the student's own, no gradient.
        targets = jax.random.categorical(key, jax.lax.stop_gradient(logits))
        mf = L.misfeedback(logits, classmate, mask, variant=variant, targets=targets)
        return kd_term + weight * mf, mf

    @jax.jit
    def step(carry, i):
        logits, state, stats = carry
        key = jax.random.fold_in(jax.random.key(seed), i)
        (loss, mf), grad = jax.value_and_grad(objective, has_aux=True)(logits, key)
        updates, state = opt.update(grad, state, logits)
        gnorm = optax.global_norm(grad)
        stats = {
            "max_grad_norm": jnp.maximum(stats["max_grad_norm"], gnorm),
            "min_misfeedback": jnp.minimum(stats["min_misfeedback"], mf),
            "finite": stats["finite"] & jnp.isfinite(loss) & jnp.isfinite(gnorm),
        }
        return (optax.apply_updates(logits, updates), state, stats), None

    stats0 = {"max_grad_norm": 0.0, "min_misfeedback": jnp.inf, "finite": True}
    carry = (init, opt.init(init), stats0)
    (logits, _, stats), _ = jax.lax.scan(step, carry, jnp.arange(steps))
    loss, mf = objective(logits, jax.random.key(seed + 1))
    return {
        "objective": float(loss),
        "misfeedback": float(mf),
        "min_misfeedback": float(stats["min_misfeedback"]) if variant != "none" else 0.0,
        "max_grad_norm": float(stats["max_grad_norm"]),
        "kl_teacher": float(L.forward_kl(logits, teacher, mask)),
        "kl_from_classmate": float(L.reverse_kl(logits, classmate, mask)),
        "finite": bool(stats["finite"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=64)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--weight", type=float, default=1.0)
    parser.add_argument("--kd", default="reverse_kl")
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args()
    kt, kn, ks = jax.random.split(jax.random.key(a.seed), 3)
    shape = (1, a.positions, a.vocab)
    teacher = 2.0 * jax.random.normal(kt, shape)
    classmate = 0.5 * teacher + 0.5 * 2.0 * jax.random.normal(kn, shape)
    init = 0.1 * jax.random.normal(ks, shape)
    print(f"kd={a.kd} weight={a.weight} steps={a.steps} lr={a.lr} V={a.vocab} N={a.positions}")
    kl_pc = float(L.forward_kl(classmate, teacher, jnp.ones(shape[:2])))
    print(f"  reference: the classmate's KL(p || c) = {kl_pc:.3f}")
    header = (
        "variant",
        "objective",
        "misfb",
        "min_misfb",
        "max_|g|",
        "KL(p||q)",
        "KL(q||c)",
        "finite",
    )
    print("  " + " ".join(f"{h:>10s}" for h in header))
    for variant in ("none", *L.MISFEEDBACK_VARIANTS):
        r = run(
            variant,
            teacher,
            classmate,
            init,
            kd=a.kd,
            weight=a.weight,
            steps=a.steps,
            lr=a.lr,
            seed=a.seed,
        )
        row = [
            r["objective"],
            r["misfeedback"],
            r["min_misfeedback"],
            r["max_grad_norm"],
            r["kl_teacher"],
            r["kl_from_classmate"],
        ]
        print(f"  {variant:>10s} " + " ".join(f"{x:10.3f}" for x in row) + f" {r['finite']!s:>10s}")


if __name__ == "__main__":
    main()
