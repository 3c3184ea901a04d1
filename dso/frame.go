package dso

import (
	"encoding/binary"
	"io"
)

// ReadMessage reads one message framed by a 2-byte length (RFC 1035 section
// 4.2.2, RFC 7766) from r into buf, growing it when it is too small, and
// returns the message (aliasing buf or its replacement). A message longer
// than max is ErrTooLong (the stream is then out of step: abort it). An
// io.EOF before the first byte is returned as is, a stream ending inside a
// message as io.ErrUnexpectedEOF.
func ReadMessage(r io.Reader, buf []byte, max int) ([]byte, error) {
	if cap(buf) < 2 {
		buf = make([]byte, 2, 512)
	}
	// The prefix is read into buf: a local array would escape through r.
	if _, err := io.ReadFull(r, buf[:2]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(buf[:2]))
	if n > max {
		return nil, ErrTooLong
	}
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return buf, nil
}

// AppendFrame appends msg with its 2-byte length prefix to dst, for a
// message not built by a Builder (whose Frame already carries one).
func AppendFrame(dst, msg []byte) []byte {
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(msg)))
	return append(dst, msg...)
}
