//! Binary upgrades without a refused connection: the running gateway listens on a Unix socket
//! (`--upgrade-socket PATH`); a new process started with the same option connects to it first,
//! receives the listening sockets themselves (SCM_RIGHTS, as HAProxy's `-x` and Envoy's hot
//! restart do), serves on them, and says `READY`. The old process then stops accepting — the
//! sockets stay open in the new one, so nothing queued in their backlogs is lost — answers
//! what it already accepted with `Connection: close`, drains, and exits 0.
//!
//! The exchange: new → `TAKEOVER\n`; old → one message: the names (JSON array, listeners by name
//! then `admin`) with their descriptors attached; new → `READY\n`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// At most this many sockets in one handover (listeners and the admin API).
const MAX_SOCKETS: usize = 64;

/// Sockets taken over from the previous process, and the line to tell it we are serving.
pub struct Handover {
    pub sockets: HashMap<String, std::net::TcpListener>,
    stream: UnixStream,
}

impl Handover {
    /// Tells the previous process that this one serves: it stops accepting and drains.
    pub fn ready(mut self) -> std::io::Result<()> {
        self.stream.write_all(b"READY\n")
    }
}

/// Asks the process at `path` for its sockets. `Ok(None)`: nothing listens there (a first start).
pub fn take_over(path: &Path) -> std::io::Result<Option<Handover>> {
    let mut stream = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"TAKEOVER\n")?;
    let (names, fds) = recv_fds(&stream)?;
    let names: Vec<String> = serde_json::from_slice(&names).map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("handover: {e}"))
    })?;
    if names.len() != fds.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "handover: names and sockets differ in number",
        ));
    }
    let sockets = names
        .into_iter()
        .zip(fds)
        // SAFETY: each descriptor was just received and is owned by nothing else here.
        .map(|(n, fd)| (n, unsafe { std::net::TcpListener::from_raw_fd(fd) }))
        .collect();
    Ok(Some(Handover { sockets, stream }))
}

/// Serves handovers at `path` for `sockets` until a new process has taken them and said
/// `READY`; then `handed_over` is notified. A taker that goes away before `READY` changes
/// nothing: this process keeps serving and waits for the next one.
pub async fn serve(path: PathBuf, sockets: Vec<(String, RawFd)>, handed_over: Arc<Notify>) {
    let listener = match bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot listen for binary upgrades");
            return;
        }
    };
    let sockets = Arc::new(sockets);
    loop {
        let listener = match listener.try_clone() {
            Ok(l) => l,
            Err(_) => return,
        };
        let sockets = Arc::clone(&sockets);
        let done = tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
            let (stream, _) = listener.accept()?;
            hand_over(&stream, &sockets)
        })
        .await;
        match done {
            Ok(Ok(true)) => {
                tracing::info!("a new process took over the listening sockets");
                handed_over.notify_one();
                return;
            }
            Ok(Ok(false)) => tracing::warn!("binary upgrade abandoned by the new process"),
            Ok(Err(e)) => tracing::warn!(error = %e, "binary upgrade failed"),
            Err(_) => return,
        }
    }
}

/// The socket path, taken over from a previous process's (which has handed over by now).
fn bind(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    UnixListener::bind(path)
}

/// One exchange: `TAKEOVER`, the sockets, then `READY` (true) or the taker gone (false).
fn hand_over(stream: &UnixStream, sockets: &[(String, RawFd)]) -> std::io::Result<bool> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if line != "TAKEOVER\n" {
        return Ok(false);
    }
    let names: Vec<&str> = sockets.iter().map(|(n, _)| n.as_str()).collect();
    let fds: Vec<RawFd> = sockets.iter().map(|(_, fd)| *fd).collect();
    send_fds(
        stream,
        &serde_json::to_vec(&names).expect("names serialise"),
        &fds,
    )?;
    line.clear();
    reader.read_line(&mut line)?;
    Ok(line == "READY\n")
}

/// A zeroed control buffer with room for one SCM_RIGHTS message of `fd_bytes`.
fn control_buffer(fd_bytes: usize) -> Vec<u8> {
    // SAFETY: CMSG_SPACE only computes a size.
    vec![0u8; unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize]
}

/// A message header over one data buffer and `control`; both must outlive its use.
fn message(iov: &mut libc::iovec, control: &mut [u8]) -> libc::msghdr {
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = control.len() as _;
    msg
}

fn send_fds(stream: &UnixStream, data: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    if fds.len() > MAX_SOCKETS {
        return Err(std::io::Error::other("too many sockets to hand over"));
    }
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let fd_bytes = std::mem::size_of_val(fds);
    let mut control = control_buffer(fd_bytes);
    let msg = message(&mut iov, &mut control);
    // SAFETY: the control buffer is CMSG_SPACE(fd_bytes) long, so the first header and its
    // data fit; the descriptors are copied into it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr() as *const u8, libc::CMSG_DATA(cmsg), fd_bytes);
        if libc::sendmsg(stream.as_raw_fd(), &msg, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn recv_fds(stream: &UnixStream) -> std::io::Result<(Vec<u8>, Vec<RawFd>)> {
    let mut data = vec![0u8; 64 * 1024];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut control = control_buffer(MAX_SOCKETS * std::mem::size_of::<RawFd>());
    let mut msg = message(&mut iov, &mut control);
    // SAFETY: recvmsg fills at most the buffers it was given; the control messages are walked
    // with the CMSG macros within msg_controllen.
    let (n, fds) = unsafe {
        let n = libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut fds = Vec::new();
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let count = len / std::mem::size_of::<RawFd>();
                let p = libc::CMSG_DATA(cmsg) as *const RawFd;
                for i in 0..count {
                    fds.push(std::ptr::read_unaligned(p.add(i)));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        (n as usize, fds)
    };
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(std::io::Error::other("handover: sockets truncated"));
    }
    data.truncate(n);
    Ok((data, fds))
}
