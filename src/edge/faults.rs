//! Fault injection, compiled only into test builds (cargo feature `faults`,
//! built by `make test` into `build-faults/`; `tests/faults.rs`).
//!
//! A request names one fault in the `x-keyward-fault` header; the fault is
//! applied where the real failure would surface, so the real error paths
//! run and the core decides the answer as it would for the real failure:
//!
//! | value | where | what happens |
//! | --- | --- | --- |
//! | `kv-read-error` | the KV read of the key record (shell) | the read fails |
//! | `kv-undecodable` | the KV read of the key record (shell) | the record read is not JSON |
//! | `guard-throw` | inside the key's `KeyGuard` object | its fetch handler throws before it counts |
//! | `guard-slow` | inside the key's `KeyGuard` object | it answers `GUARD_TIMEOUT_MS` + 1 s late |
//! | `org-down` | inside the org's `OrgStore` object, control API calls | its fetch handler throws |
//! | `org-guard-throw` | the key guards the org's object tells of an update or a roll (control API) | their fetch handler throws |
//!
//! The guard and org faults travel to the object in the same header on the
//! worker's internal request (only the calls made for the request at hand:
//! never a refund or report sent after the response). The header is a
//! client `X-Keyward-*` header, so it is never forwarded to the origin
//! (`src/signing.rs`).
//!
//! In a build without the feature, [`Fault`] is a zero-sized type whose
//! methods do nothing: the header is never read and no fault code is in the
//! wasm that is deployed.

/// The request header naming a fault (test builds only).
#[cfg(feature = "faults")]
pub(crate) const HEADER: &str = "x-keyward-fault";

/// The fault a request asked for (test builds), or nothing.
#[cfg(feature = "faults")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    None,
    KvReadError,
    KvUndecodable,
    GuardThrow,
    GuardSlow,
    OrgDown,
    OrgGuardThrow,
}

/// No fault: builds without the `faults` feature.
#[cfg(not(feature = "faults"))]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fault;

#[cfg(feature = "faults")]
impl Fault {
    /// No fault (the calls made after the response, the admin API's).
    pub(crate) fn none() -> Fault {
        Fault::None
    }

    /// The fault named by the request's `x-keyward-fault` header. An unknown
    /// name is no fault (and logged).
    pub(crate) fn of(req: &worker::Request) -> Fault {
        let Some(name) = req.headers().get(HEADER).ok().flatten() else { return Fault::None };
        match name.trim() {
            "kv-read-error" => Fault::KvReadError,
            "kv-undecodable" => Fault::KvUndecodable,
            "guard-throw" => Fault::GuardThrow,
            "guard-slow" => Fault::GuardSlow,
            "org-down" => Fault::OrgDown,
            "org-guard-throw" => Fault::OrgGuardThrow,
            other => {
                worker::console_warn!("keyward (faults build): unknown fault {other:?} ignored");
                Fault::None
            }
        }
    }

    fn name(self) -> Option<&'static str> {
        Some(match self {
            Fault::None => return None,
            Fault::KvReadError => "kv-read-error",
            Fault::KvUndecodable => "kv-undecodable",
            Fault::GuardThrow => "guard-throw",
            Fault::GuardSlow => "guard-slow",
            Fault::OrgDown => "org-down",
            Fault::OrgGuardThrow => "org-guard-throw",
        })
    }

    /// The KV read of a key record, as the fault makes it: failed, or
    /// answering text that is not a record.
    pub(crate) fn kv_read(self, read: Result<Option<String>, String>) -> Result<Option<String>, String> {
        match self {
            Fault::KvReadError => Err("injected fault: KV read error".into()),
            Fault::KvUndecodable => Ok(Some("{\"injected fault\": undecodable".into())),
            _ => read,
        }
    }

    /// Marks the worker's request to a key guard with the guard's faults.
    pub(crate) fn tag_guard(self, headers: &worker::Headers) {
        if let (Fault::GuardThrow | Fault::GuardSlow, Some(name)) = (self, self.name()) {
            let _ = headers.set(HEADER, name);
        }
    }

    /// Headers for the worker's request to an org object: its fault.
    pub(crate) fn for_org(self) -> Option<worker::Headers> {
        matches!(self, Fault::OrgDown | Fault::OrgGuardThrow).then(|| self.headers()).flatten()
    }

    /// Inside the `OrgStore` object: the fault of the key guards it calls.
    pub(crate) fn for_org_guards(self) -> Fault {
        if self == Fault::OrgGuardThrow {
            Fault::GuardThrow
        } else {
            Fault::None
        }
    }

    fn headers(self) -> Option<worker::Headers> {
        let h = worker::Headers::new();
        h.set(HEADER, self.name()?).ok()?;
        Some(h)
    }

    /// Inside the `KeyGuard` object, before anything is counted: throw, or
    /// answer `timeout_ms` + 1 s late (then go on as a slow guard would).
    pub(crate) async fn in_guard(self, timeout_ms: u32) -> worker::Result<()> {
        match self {
            Fault::GuardThrow => Err(worker::Error::RustError("injected fault: the key guard threw".into())),
            Fault::GuardSlow => {
                let ms = u64::from(timeout_ms) + 1_000;
                worker::Delay::from(std::time::Duration::from_millis(ms)).await;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Inside the `OrgStore` object, before the command runs: throw.
    pub(crate) fn in_org(self) -> worker::Result<()> {
        match self {
            Fault::OrgDown => Err(worker::Error::RustError("injected fault: the org object is down".into())),
            _ => Ok(()),
        }
    }
}

#[cfg(not(feature = "faults"))]
impl Fault {
    #[inline(always)]
    pub(crate) fn none() -> Fault {
        Fault
    }

    #[inline(always)]
    pub(crate) fn of(_req: &worker::Request) -> Fault {
        Fault
    }

    #[inline(always)]
    pub(crate) fn kv_read(self, read: Result<Option<String>, String>) -> Result<Option<String>, String> {
        read
    }

    #[inline(always)]
    pub(crate) fn tag_guard(self, _headers: &worker::Headers) {}

    #[inline(always)]
    pub(crate) fn for_org(self) -> Option<worker::Headers> {
        None
    }

    #[inline(always)]
    pub(crate) async fn in_guard(self, _timeout_ms: u32) -> worker::Result<()> {
        Ok(())
    }

    #[inline(always)]
    pub(crate) fn in_org(self) -> worker::Result<()> {
        Ok(())
    }

    #[inline(always)]
    pub(crate) fn for_org_guards(self) -> Fault {
        Fault
    }
}
