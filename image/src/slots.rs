//! The A/B system slots: which slot boots, the boot-once trial of a freshly installed slot,
//! and the boot loader files that express it. Pure: the appliance persists [`SlotState`] on
//! its data partition and writes [`boot_files`] to the ESP.
//!
//! Update: [`begin_trial`] marks the other slot for one trial boot (boot loaders point at it
//! with `godwit.trial=1`). On that boot [`after_boot`] at once points the boot loaders back
//! at the active slot (so any later reboot returns to the known-good system), then the health
//! check decides: [`after_health`] commits the new slot or records the rollback.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "A",
            Slot::B => "B",
        }
    }
    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "A" => Some(Slot::A),
            "B" => Some(Slot::B),
            _ => None,
        }
    }
}

/// Persisted slot state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotState {
    /// The known-good slot.
    pub active: Slot,
    /// A slot installed and armed for one trial boot.
    pub trial: Option<Slot>,
    /// A slot being tried on this boot, awaiting its health check.
    pub testing: Option<Slot>,
    /// What happened to the last update, for the console and the wizard.
    pub last_result: Option<String>,
}

impl Default for SlotState {
    fn default() -> Self {
        SlotState {
            active: Slot::A,
            trial: None,
            testing: None,
            last_result: None,
        }
    }
}

/// Kernel arguments every slot boots with (serial last: it becomes /dev/console).
pub const KERNEL_ARGS: &str = "console=tty0 console=ttyS0,115200 quiet panic=10";

/// Boot loader files for a state: (`/boot/grub/slot.cfg`, `/boot/syslinux/syslinux.cfg`).
pub fn boot_files(state: &SlotState) -> (String, String) {
    let (slot, trial) = match state.trial {
        Some(t) => (t, " godwit.trial=1"),
        None => (state.active, ""),
    };
    let s = slot.name();
    let grub = format!("set slot={s}\nset godwit_trial={}\n", trial.trim());
    let syslinux = format!(
        "SERIAL 0 115200\nDEFAULT godwit\nTIMEOUT 0\nPROMPT 0\nLABEL godwit\n  LINUX /{s}/vmlinuz\n  \
         INITRD /{s}/initrd.img\n  APPEND {KERNEL_ARGS} godwit.slot={s}{trial}\n"
    );
    (grub, syslinux)
}

/// The GRUB main configuration (reads `slot.cfg`, so updates rewrite only that file).
pub fn grub_cfg() -> String {
    format!(
        "set timeout=0\nserial --unit=0 --speed=115200\nterminal_input serial console\nterminal_output serial console\n\
         source /boot/grub/slot.cfg\nmenuentry \"Godwit $slot\" {{\n  linux /$slot/vmlinuz {KERNEL_ARGS} godwit.slot=$slot $godwit_trial\n  \
         initrd /$slot/initrd.img\n}}\n"
    )
}

/// Which slot the kernel command line says booted, and whether it is a trial boot.
pub fn from_cmdline(cmdline: &str) -> (Option<Slot>, bool) {
    let mut slot = None;
    let mut trial = false;
    for w in cmdline.split_whitespace() {
        if let Some(s) = w.strip_prefix("godwit.slot=") {
            slot = Slot::parse(s);
        } else if w == "godwit.trial=1" {
            trial = true;
        }
    }
    (slot, trial)
}

/// Arm the inactive slot (already filled with a verified bundle) for one trial boot.
pub fn begin_trial(state: &SlotState) -> Result<(SlotState, Slot)> {
    if state.trial.is_some() || state.testing.is_some() {
        return Err(Error::invalid(
            "update",
            "another update is waiting for its trial boot",
        ));
    }
    let target = state.active.other();
    Ok((
        SlotState {
            trial: Some(target),
            ..state.clone()
        },
        target,
    ))
}

/// The slot the update writes into (the inactive one).
pub fn target_slot(state: &SlotState) -> Slot {
    state.active.other()
}

/// What this boot is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootKind {
    Normal,
    /// Trial of a new slot: run the health check, then [`after_health`].
    Trial(Slot),
}

/// State to persist (and boot files to write) as soon as the system is up.
pub fn after_boot(
    state: &SlotState,
    booted: Option<Slot>,
    trial_flag: bool,
) -> (SlotState, BootKind) {
    match (state.trial, booted) {
        (Some(t), Some(b)) if trial_flag && t == b => (
            SlotState {
                trial: None,
                testing: Some(t),
                ..state.clone()
            },
            BootKind::Trial(t),
        ),
        (Some(t), _) => (
            SlotState {
                trial: None,
                testing: None,
                last_result: Some(format!(
                    "slot {} did not come up; still running slot {}",
                    t.name(),
                    state.active.name()
                )),
                ..state.clone()
            },
            BootKind::Normal,
        ),
        (None, _) if state.testing.is_some() => {
            let t = state.testing.map(Slot::name).unwrap_or("?");
            (
                SlotState {
                    testing: None,
                    last_result: Some(format!(
                        "slot {t} failed before its health check; rolled back to slot {}",
                        state.active.name()
                    )),
                    ..state.clone()
                },
                BootKind::Normal,
            )
        }
        _ => (state.clone(), BootKind::Normal),
    }
}

/// Outcome of the trial boot's health check. Healthy: the slot becomes active. Not: the
/// active slot stays (the boot loaders already point at it) and the caller reboots.
pub fn after_health(state: &SlotState, slot: Slot, healthy: bool, detail: &str) -> SlotState {
    if healthy {
        SlotState {
            active: slot,
            trial: None,
            testing: None,
            last_result: Some(format!("slot {} committed: {detail}", slot.name())),
        }
    } else {
        SlotState {
            trial: None,
            testing: None,
            last_result: Some(format!(
                "slot {} failed its health check ({detail}); rolled back to slot {}",
                slot.name(),
                state.active.name()
            )),
            ..state.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_commits_when_healthy() {
        let s = SlotState::default();
        let (armed, target) = begin_trial(&s).unwrap();
        assert_eq!(target, Slot::B);
        let (grub, sys) = boot_files(&armed);
        assert!(grub.contains("slot=B") && grub.contains("godwit.trial=1"));
        assert!(sys.contains("/B/vmlinuz") && sys.contains("godwit.slot=B godwit.trial=1"));
        assert!(begin_trial(&armed).is_err(), "one update at a time");
        let (cmd_slot, trial) =
            from_cmdline(&format!("{KERNEL_ARGS} godwit.slot=B godwit.trial=1"));
        let (testing, kind) = after_boot(&armed, cmd_slot, trial);
        assert_eq!(kind, BootKind::Trial(Slot::B));
        // Boot loaders point back at A while B is tested.
        assert!(boot_files(&testing).1.contains("/A/vmlinuz"));
        let done = after_health(&testing, Slot::B, true, "setup page answered");
        assert_eq!(done.active, Slot::B);
        assert!(
            boot_files(&done).1.contains("/B/vmlinuz") && !boot_files(&done).1.contains("trial")
        );
    }

    #[test]
    fn unhealthy_or_lost_trials_roll_back() {
        let (armed, _) = begin_trial(&SlotState::default()).unwrap();
        let (testing, _) = after_boot(&armed, Some(Slot::B), true);
        let back = after_health(&testing, Slot::B, false, "no network");
        assert_eq!(back.active, Slot::A);
        assert!(back.last_result.unwrap().contains("rolled back to slot A"));
        // The trial slot crashed after disarming: the next boot (A) records it.
        let (after, kind) = after_boot(&testing, Some(Slot::A), false);
        assert_eq!(kind, BootKind::Normal);
        assert_eq!(after.active, Slot::A);
        assert!(after.testing.is_none() && after.last_result.unwrap().contains("failed before"));
        // Booted A although B was armed.
        let (after, _) = after_boot(&armed, Some(Slot::A), false);
        assert!(after.trial.is_none() && after.last_result.unwrap().contains("did not come up"));
    }

    #[test]
    fn cmdline() {
        assert_eq!(from_cmdline("quiet godwit.slot=A"), (Some(Slot::A), false));
        assert_eq!(from_cmdline("godwit.slot=C"), (None, false));
        assert!(grub_cfg().contains("source /boot/grub/slot.cfg"));
    }
}
