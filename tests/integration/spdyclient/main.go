// spdyclient: a Kubernetes streaming client built on Debian's Go spdystream, as kubectl's
// (client-go) SPDY executor and port-forwarder use it. For the streaming tests only.
//
//	spdyclient -url URL exec [-stdin] [-stdout] [-stderr] [-tty] [-resize WxH] [-status FILE]
//	spdyclient -url URL portforward -port P [-conns N] [-data TEXT]
//	spdyclient execloop   (one exec of stdout only per URL read from stdin; a JSON line each)
package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/moby/spdystream"
)

type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "spdyclient: "+format+"\n", args...)
	os.Exit(2)
}

func dial(raw string, protocols []string) (*spdystream.Connection, string) {
	u, err := url.Parse(raw)
	if err != nil {
		fail("%v", err)
	}
	var conn net.Conn
	if u.Scheme == "https" {
		conn, err = tls.Dial("tcp", u.Host, &tls.Config{InsecureSkipVerify: true})
	} else {
		conn, err = net.Dial("tcp", u.Host)
	}
	if err != nil {
		fail("dial: %v", err)
	}
	req, _ := http.NewRequest("POST", raw, nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "SPDY/3.1")
	for _, p := range protocols {
		req.Header.Add("X-Stream-Protocol-Version", p)
	}
	if err := req.Write(conn); err != nil {
		fail("write request: %v", err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		fail("read response: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(resp.Body)
		fmt.Printf("HTTP %d %s", resp.StatusCode, body)
		os.Exit(3)
	}
	sc, err := spdystream.NewConnection(&bufConn{conn, br}, false)
	if err != nil {
		fail("spdy: %v", err)
	}
	go sc.Serve(spdystream.NoOpStreamHandler)
	return sc, resp.Header.Get("X-Stream-Protocol-Version")
}

func stream(sc *spdystream.Connection, headers http.Header) *spdystream.Stream {
	s, err := sc.CreateStream(headers, nil, false)
	if err != nil {
		fail("create stream: %v", err)
	}
	if err := s.WaitTimeout(30 * time.Second); err != nil {
		fail("stream reply: %v", err)
	}
	return s
}

func execMain(raw string, args []string) {
	fs := flag.NewFlagSet("exec", flag.ExitOnError)
	stdin := fs.Bool("stdin", false, "send our stdin")
	stdout := fs.Bool("stdout", true, "")
	stderr := fs.Bool("stderr", false, "")
	tty := fs.Bool("tty", false, "")
	resize := fs.String("resize", "", "WxH sent on the resize stream")
	status := fs.String("status", "", "file for the error stream's content")
	protocol := fs.String("protocol", "v4.channel.k8s.io", "comma-separated, preferred first")
	fs.Parse(args)
	sc, chosen := dial(raw, strings.Split(*protocol, ","))
	fmt.Fprintf(os.Stderr, "protocol: %s\n", chosen)
	errStream := stream(sc, http.Header{"streamType": {"error"}})
	var wg sync.WaitGroup
	if *stdin {
		s := stream(sc, http.Header{"streamType": {"stdin"}})
		go func() {
			io.Copy(s, os.Stdin)
			s.Close()
		}()
	}
	copyOut := func(kind string, w io.Writer) {
		s := stream(sc, http.Header{"streamType": {kind}})
		wg.Add(1)
		go func() {
			defer wg.Done()
			io.Copy(w, s)
		}()
	}
	if *stdout {
		copyOut("stdout", os.Stdout)
	}
	if *stderr && !*tty {
		copyOut("stderr", os.Stderr)
	}
	if *tty && chosen != "v2.channel.k8s.io" && chosen != "channel.k8s.io" && chosen != "" {
		s := stream(sc, http.Header{"streamType": {"resize"}})
		if *resize != "" {
			wh := strings.Split(*resize, "x")
			w, _ := strconv.Atoi(wh[0])
			h, _ := strconv.Atoi(wh[1])
			fmt.Fprintf(s, "{\"Width\":%d,\"Height\":%d}", w, h)
		}
	}
	errData, _ := io.ReadAll(errStream)
	wg.Wait()
	if *status != "" {
		os.WriteFile(*status, errData, 0o644)
	}
	sc.Close()
}

// execLoop serves benchmarks: one long-lived process, so that its start is not timed.
func execLoop() {
	lines := bufio.NewScanner(os.Stdin)
	out := json.NewEncoder(os.Stdout)
	for lines.Scan() {
		sc, _ := dial(strings.TrimSpace(lines.Text()), []string{"v4.channel.k8s.io"})
		errStream := stream(sc, http.Header{"streamType": {"error"}})
		stdout := stream(sc, http.Header{"streamType": {"stdout"}})
		var buf bytes.Buffer
		done := make(chan bool)
		go func() { io.Copy(&buf, stdout); close(done) }()
		status, _ := io.ReadAll(errStream)
		<-done
		sc.Close()
		out.Encode(map[string]string{"stdout": buf.String(), "status": string(status)})
	}
}

func portForwardMain(raw string, args []string) {
	fs := flag.NewFlagSet("portforward", flag.ExitOnError)
	port := fs.Int("port", 80, "")
	conns := fs.Int("conns", 1, "connections at once")
	data := fs.String("data", "", "sent on each connection before closing our side")
	count := fs.Bool("count", false, "print how many bytes came back instead of them")
	fs.Parse(args)
	sc, _ := dial(raw, []string{"portforward.k8s.io"})
	results := make([]string, *conns)
	var wg sync.WaitGroup
	for i := 0; i < *conns; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			h := http.Header{"streamType": {"error"}, "port": {strconv.Itoa(*port)},
				"requestID": {strconv.Itoa(i)}}
			es := stream(sc, h)
			es.Close() // kubectl closes its side of the error stream at once
			h = http.Header{"streamType": {"data"}, "port": {strconv.Itoa(*port)},
				"requestID": {strconv.Itoa(i)}}
			ds := stream(sc, h)
			var errData []byte
			done := make(chan bool)
			go func() { errData, _ = io.ReadAll(es); close(done) }()
			io.WriteString(ds, strings.ReplaceAll(*data, "{i}", strconv.Itoa(i)))
			var out []byte
			if *count {
				n, _ := io.Copy(io.Discard, ds)
				out = []byte(strconv.FormatInt(n, 10))
			} else {
				out, _ = io.ReadAll(ds)
			}
			<-done
			results[i] = fmt.Sprintf("%d|%s|%s", i, out, errData)
		}(i)
	}
	wg.Wait()
	for _, r := range results {
		fmt.Println(strings.NewReplacer("\r", "\\r", "\n", "\\n").Replace(r))
	}
	sc.Close()
}

func main() {
	raw := flag.String("url", "", "the URL the CRI returned")
	flag.Parse()
	args := flag.Args()
	if len(args) == 1 && args[0] == "execloop" {
		execLoop()
		return
	}
	if len(args) == 0 {
		fail("exec or portforward?")
	}
	switch args[0] {
	case "exec":
		execMain(*raw, args[1:])
	case "portforward":
		portForwardMain(*raw, args[1:])
	default:
		fail("unknown mode %s", args[0])
	}
}
