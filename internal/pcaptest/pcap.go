// Package pcaptest writes DNS-over-TCP conversations as pcap files, so that
// tests can have Wireshark's dissectors (tshark) check bytes llq wrote.
package pcaptest

import (
	"bytes"
	"encoding/binary"
)

// TCP returns a pcap file (link type RAW, IPv4) holding one TCP
// connection between 127.0.0.1:40000 and 127.0.0.2:53: a handshake, then
// each frame (first byte 1 when the client sends it, then the bytes) as one
// segment with correct sequence numbers and checksums.
func TCP(frames [][]byte) []byte {
	var out bytes.Buffer
	hdr := make([]byte, 24)
	binary.LittleEndian.PutUint32(hdr, 0xa1b2c3d4)
	binary.LittleEndian.PutUint16(hdr[4:], 2)
	binary.LittleEndian.PutUint16(hdr[6:], 4)
	binary.LittleEndian.PutUint32(hdr[16:], 65535)
	binary.LittleEndian.PutUint32(hdr[20:], 101) // LINKTYPE_RAW
	out.Write(hdr)
	client, server := [4]byte{127, 0, 0, 1}, [4]byte{127, 0, 0, 2}
	cseq, sseq := uint32(1000), uint32(5000)
	n := 0
	packet := func(fromClient bool, flags byte, payload []byte) {
		src, dst, sport, dport, seq, ack := client, server, uint16(40000), uint16(53), cseq, sseq
		if !fromClient {
			src, dst, sport, dport, seq, ack = server, client, 53, 40000, sseq, cseq
		}
		if flags&0x10 == 0 {
			ack = 0
		}
		tcp := make([]byte, 20, 20+len(payload))
		binary.BigEndian.PutUint16(tcp, sport)
		binary.BigEndian.PutUint16(tcp[2:], dport)
		binary.BigEndian.PutUint32(tcp[4:], seq)
		binary.BigEndian.PutUint32(tcp[8:], ack)
		tcp[12] = 5 << 4
		tcp[13] = flags
		binary.BigEndian.PutUint16(tcp[14:], 65535)
		tcp = append(tcp, payload...)
		pseudo := append(append(append([]byte{}, src[:]...), dst[:]...), 0, 6, byte(len(tcp)>>8), byte(len(tcp)))
		binary.BigEndian.PutUint16(tcp[16:], checksum(append(pseudo, tcp...)))
		ip := make([]byte, 20, 20+len(tcp))
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(tcp)))
		ip[8], ip[9] = 64, 6
		copy(ip[12:], src[:])
		copy(ip[16:], dst[:])
		binary.BigEndian.PutUint16(ip[10:], checksum(ip))
		ip = append(ip, tcp...)
		rec := make([]byte, 16)
		n++
		binary.LittleEndian.PutUint32(rec, uint32(1700000000+n))
		binary.LittleEndian.PutUint32(rec[8:], uint32(len(ip)))
		binary.LittleEndian.PutUint32(rec[12:], uint32(len(ip)))
		out.Write(rec)
		out.Write(ip)
		adv := uint32(len(payload))
		if flags&0x02 != 0 { // SYN takes a sequence number
			adv = 1
		}
		if fromClient {
			cseq += adv
		} else {
			sseq += adv
		}
	}
	const syn, ack, psh = 0x02, 0x10, 0x08
	packet(true, syn, nil)
	packet(false, syn|ack, nil)
	packet(true, ack, nil)
	for _, f := range frames {
		packet(f[0] == 1, psh|ack, f[1:])
	}
	return out.Bytes()
}

func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
