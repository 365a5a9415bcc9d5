//! W3C trace context (`traceparent`, `tracestate`): what a submission
//! brings is kept with its jobs and returned on them.

/// A submission's trace context, as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// `version-trace_id-parent_id-flags`, lowercase hex.
    pub traceparent: String,
    pub tracestate: Option<String>,
}

/// Longest `tracestate` kept: the W3C limit of 32 members fits in 512
/// characters in practice, which is what vendors are asked to propagate.
const MAX_TRACESTATE: usize = 512;

impl TraceContext {
    /// The context of a request's headers, or `None` when `traceparent` is
    /// absent or malformed. A malformed one is ignored, not refused: the
    /// W3C recommendation asks a receiver to start a new trace rather than
    /// fail the request. `tracestate` is kept only with a valid parent and
    /// when it is short printable ASCII.
    pub fn from_headers(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<Self> {
        let traceparent = traceparent?.trim();
        if !valid_traceparent(traceparent) {
            return None;
        }
        let tracestate = tracestate
            .map(str::trim)
            .filter(|state| {
                !state.is_empty()
                    && state.len() <= MAX_TRACESTATE
                    && state.bytes().all(|b| (0x20..0x7f).contains(&b))
            })
            .map(str::to_owned);
        Some(Self {
            traceparent: traceparent.to_owned(),
            tracestate,
        })
    }

    /// The 32-hex-digit trace id (empty for a context not made by
    /// `from_headers`, whose fields are public).
    pub fn trace_id(&self) -> &str {
        self.traceparent.get(3..35).unwrap_or_default()
    }

    /// The 16-hex-digit id of the span this context names as parent.
    pub fn span_id(&self) -> &str {
        self.traceparent.get(36..52).unwrap_or_default()
    }

    /// Whether the caller may have recorded its span (flag bit 0).
    pub fn sampled(&self) -> bool {
        self.traceparent
            .get(53..55)
            .and_then(|flags| u8::from_str_radix(flags, 16).ok())
            .is_some_and(|flags| flags & 1 == 1)
    }

    /// A context made of ids (a span's, as the exporter chose them).
    /// `None` when an id is zero, which W3C forbids.
    pub fn from_ids(
        trace_id: u128,
        span_id: u64,
        sampled: bool,
        tracestate: Option<String>,
    ) -> Option<Self> {
        (trace_id != 0 && span_id != 0).then(|| Self {
            traceparent: format!("00-{trace_id:032x}-{span_id:016x}-0{}", u8::from(sampled)),
            tracestate,
        })
    }

    /// The context of a new trace, for a request or an attempt that came
    /// with none: its log lines still share one `trace_id`.
    pub fn root() -> Self {
        let trace_id = nonzero(rand::random::<u128>);
        Self {
            traceparent: format!(
                "00-{trace_id:032x}-{:016x}-01",
                nonzero(rand::random::<u64>)
            ),
            tracestate: None,
        }
    }

    /// The context of a step of this trace (an attempt): the same trace id
    /// and flags under a new parent id, so what the step calls is seen as
    /// its child. Always version 00, which is what this service speaks.
    pub fn child(&self) -> Self {
        let span_id = nonzero(rand::random::<u64>);
        let flags = self.traceparent.get(53..55).unwrap_or("00");
        Self {
            traceparent: format!("00-{}-{span_id:016x}-{flags}", self.trace_id()),
            tracestate: self.tracestate.clone(),
        }
    }
}

/// A random id that is not zero (zero means "no id" in W3C trace context).
fn nonzero<T: PartialEq + Default>(random: impl Fn() -> T) -> T {
    loop {
        let id = random();
        if id != T::default() {
            return id;
        }
    }
}

/// Version 00's shape (`00-<32 hex>-<16 hex>-<2 hex>`), or a later version's
/// first four fields (later versions may append fields); never version
/// `ff`, an all-zero trace id or an all-zero parent id; lowercase only.
fn valid_traceparent(value: &str) -> bool {
    let fields: Vec<&str> = value.split('-').collect();
    let hex = |field: &str, len: usize| {
        field.len() == len
            && field
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let [version, trace_id, parent_id, flags, rest @ ..] = fields.as_slice() else {
        return false;
    };
    hex(version, 2)
        && *version != "ff"
        && (rest.is_empty() || *version != "00")
        && hex(trace_id, 32)
        && hex(parent_id, 16)
        && hex(flags, 2)
        && trace_id.bytes().any(|b| b != b'0')
        && parent_id.bytes().any(|b| b != b'0')
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_kept_with_its_tracestate() {
        let context =
            TraceContext::from_headers(Some(VALID), Some("congo=t61rcWkgMzE")).expect("valid");
        assert_eq!(context.traceparent, VALID);
        assert_eq!(context.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
        assert_eq!(context.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn a_child_keeps_the_trace_and_flags_under_a_new_parent() {
        let context = TraceContext::from_headers(Some(VALID), Some("a=b")).expect("valid");
        let child = context.child();
        assert!(
            valid_traceparent(&child.traceparent),
            "{}",
            child.traceparent
        );
        assert_eq!(child.trace_id(), context.trace_id());
        assert_eq!(&child.traceparent[53..], "01");
        assert_ne!(child.traceparent, context.traceparent);
        assert_eq!(child.tracestate.as_deref(), Some("a=b"));
    }

    #[test]
    fn a_root_and_a_context_made_of_ids_are_valid_and_say_their_ids() {
        let root = TraceContext::root();
        assert!(valid_traceparent(&root.traceparent), "{}", root.traceparent);
        assert!(root.sampled());
        let made = TraceContext::from_ids(0xabc, 0x12, false, None).expect("non-zero ids");
        assert_eq!(
            made.traceparent,
            "00-00000000000000000000000000000abc-0000000000000012-00"
        );
        assert_eq!(made.span_id(), "0000000000000012");
        assert!(!made.sampled());
        assert_eq!(TraceContext::from_ids(0, 1, true, None), None);
        assert_eq!(TraceContext::from_ids(1, 0, true, None), None);
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::from_headers(Some(bad), None), None, "{bad}");
        }
        assert_eq!(TraceContext::from_headers(None, Some("a=b")), None);
    }

    #[test]
    fn a_later_version_may_carry_more_fields_and_a_bad_tracestate_is_dropped() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever";
        assert!(TraceContext::from_headers(Some(later), None).is_some());
        let context = TraceContext::from_headers(Some(VALID), Some("a=\u{1}")).expect("valid");
        assert_eq!(context.tracestate, None);
        let long = "a=".to_owned() + &"b".repeat(600);
        let context = TraceContext::from_headers(Some(VALID), Some(&long)).expect("valid");
        assert_eq!(context.tracestate, None);
    }
}
