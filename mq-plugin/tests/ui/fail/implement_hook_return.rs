//! A plugin cannot implement the return traits: an `Outcome::Manual` from
//! safe code would take control and never resume (the host would hang).
//! Taking control stays behind `unsafe { ManualControl::take() }`.
#![forbid(unsafe_code)]
use mq_plugin::__private::v1::Outcome;
use mq_plugin::prelude::*;
mq_plugin::declare_plugin!();

struct NeverResume;

impl mq_plugin::HookReturn for NeverResume {
    fn into_outcome(self) -> Outcome {
        Outcome::Manual
    }
}

#[mq_hook(smtp_in_connect)]
fn hang() -> NeverResume {
    NeverResume
}

#[mq_hook(smtp_in_rcptto)]
async fn hang_async() -> NeverResume {
    NeverResume
}

struct Quiet;

impl mq_plugin::LifecycleReturn for Quiet {
    fn into_result(self) -> Result<(), String> {
        Ok(())
    }
}

#[mq_hook(initialize)]
fn init() -> Quiet {
    Quiet
}

fn main() {}
