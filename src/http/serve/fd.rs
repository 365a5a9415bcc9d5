//! The open-file limit: raised to its hard limit at start-up, and the
//! default connection cap derived from it.

/// The process's limit on open file descriptors (`RLIMIT_NOFILE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit in force now.
    pub soft: u64,
    /// The soft limit before start-up raised it.
    pub before: u64,
}

/// Highest default connection cap: each open connection costs memory
/// (buffers, its task) besides its descriptor, about 10–20 KiB idle.
pub const DEFAULT_MAX_CONNECTIONS_CEILING: usize = 65_536;

/// The cap when `SPOOL_MAX_CONNECTIONS` is not set: three quarters of the
/// descriptor limit, so that the last quarter is left for database
/// connections, outbound requests, files and refusals and accept never runs
/// into EMFILE; at most [`DEFAULT_MAX_CONNECTIONS_CEILING`].
pub fn default_max_connections(fd_limit: u64) -> usize {
    let share = fd_limit - fd_limit / 4;
    usize::try_from(share)
        .unwrap_or(usize::MAX)
        .clamp(1, DEFAULT_MAX_CONNECTIONS_CEILING)
}

/// Descriptors a cap set by the operator should leave for everything else;
/// with fewer, start-up warns.
pub const FDS_FOR_THE_REST: u64 = 128;

/// Raises the soft descriptor limit to the hard one: distributions ship a
/// soft limit of 1 024 for the sake of programs that use `select`, which
/// Spool doesn't.
#[cfg(unix)]
pub fn raise_fd_limit() -> std::io::Result<FdLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(FdLimit {
        soft: limit.rlim_cur,
        before,
    })
}

#[cfg(not(unix))]
pub fn raise_fd_limit() -> std::io::Result<FdLimit> {
    Err(std::io::Error::other(
        "descriptor limits are only managed on Unix",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_leaves_a_quarter_of_the_descriptors_and_has_a_ceiling() {
        assert_eq!(default_max_connections(1_024), 768);
        assert_eq!(default_max_connections(20_000), 15_000);
        assert_eq!(
            default_max_connections(1_048_576),
            DEFAULT_MAX_CONNECTIONS_CEILING
        );
        assert_eq!(
            default_max_connections(u64::MAX),
            DEFAULT_MAX_CONNECTIONS_CEILING
        );
        assert_eq!(default_max_connections(0), 1);
    }
}
