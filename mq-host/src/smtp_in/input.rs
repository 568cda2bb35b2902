//! A session's buffered input: bytes read from the socket (decrypted under
//! TLS) that the commands' interpreter has not consumed yet.
//!
//! Consuming is a cursor move, not a copy: the consumed prefix is dropped
//! only when it is at least half the buffer, so a pipelined batch of any
//! size costs time linear in its size (each byte is moved at most once on
//! average), however many commands it holds.

/// Unconsumed input, with its consumed prefix dropped lazily.
#[derive(Debug, Default)]
pub(super) struct InputBuffer {
    bytes: Vec<u8>,
    /// Where the unconsumed input starts in `bytes`.
    start: usize,
    /// Bytes moved by compaction so far (the cost the cursor saves).
    moved: usize,
}

impl InputBuffer {
    /// The unconsumed input.
    pub(super) fn pending(&self) -> &[u8] {
        &self.bytes[self.start..]
    }

    /// How many bytes are unconsumed.
    pub(super) fn len(&self) -> usize {
        self.bytes.len() - self.start
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks the first `n` unconsumed bytes consumed.
    pub(super) fn consume(&mut self, n: usize) {
        self.start += n.min(self.len());
        if self.start == self.bytes.len() {
            self.bytes.clear();
            self.start = 0;
        }
    }

    /// Appends bytes read from the socket.
    pub(super) fn extend(&mut self, data: &[u8]) {
        if self.start > 0 && self.start >= self.bytes.len() / 2 {
            self.moved += self.len();
            self.bytes.drain(..self.start);
            self.start = 0;
        }
        self.bytes.extend_from_slice(data);
    }

    /// Forgets all unconsumed input (and frees a large buffer).
    pub(super) fn clear(&mut self) {
        self.bytes = Vec::new();
        self.start = 0;
    }

    /// The next line without its line end, if a whole line is buffered.
    pub(super) fn take_line(&mut self) -> Option<Vec<u8>> {
        let pending = self.pending();
        let end = pending.iter().position(|b| *b == b'\n')?;
        let line = &pending[..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line).to_vec();
        self.consume(end + 1);
        Some(line)
    }

    /// Bytes moved by compaction so far.
    #[cfg(test)]
    pub(super) fn moved(&self) -> usize {
        self.moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtp_proto::request::receiver::RequestReceiver;

    /// A pipelined batch of `commands` NOOPs read in 16 KiB pieces and
    /// parsed as a session does; returns (commands parsed, bytes moved).
    fn pipelined_noops(commands: usize) -> (usize, usize) {
        let batch = b"NOOP\r\n".repeat(commands);
        let mut input = InputBuffer::default();
        let mut parser = RequestReceiver::default();
        let mut parsed = 0;
        for piece in batch.chunks(16 * 1024) {
            input.extend(piece);
            loop {
                let mut bytes = input.pending().iter();
                let before = bytes.len();
                let complete = parser.ingest(&mut bytes).is_ok();
                let used = before - bytes.len();
                input.consume(used);
                if !complete {
                    break;
                }
                parsed += 1;
            }
        }
        (parsed, input.moved())
    }

    #[test]
    fn a_pipelined_batch_costs_linear_time() {
        // Draining the consumed prefix per command (the old way) moves
        // about n²/2 command lengths; the cursor moves each byte at most
        // once on average.
        for commands in [1_000, 10_000, 100_000] {
            let (parsed, moved) = pipelined_noops(commands);
            assert_eq!(parsed, commands);
            let size = commands * b"NOOP\r\n".len();
            assert!(moved <= size, "{moved} bytes moved for a {size}-byte batch");
        }
    }

    #[test]
    fn lines_and_partial_input() {
        let mut input = InputBuffer::default();
        input.extend(b"dXNlcg==\r\npart");
        assert_eq!(input.take_line().as_deref(), Some(&b"dXNlcg=="[..]));
        assert_eq!(input.take_line(), None);
        assert_eq!(input.pending(), b"part");
        input.extend(b"ial\n");
        assert_eq!(input.take_line().as_deref(), Some(&b"partial"[..]));
        assert!(input.is_empty());
    }

    #[test]
    fn consuming_everything_resets_the_buffer() {
        let mut input = InputBuffer::default();
        input.extend(&[b'x'; 100]);
        input.consume(60);
        assert_eq!(input.len(), 40);
        input.consume(1000);
        assert!(input.is_empty());
        input.extend(b"ab");
        assert_eq!(input.pending(), b"ab");
        assert_eq!(input.moved(), 0);
    }
}
