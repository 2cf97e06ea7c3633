// The GCS emulator the tests run: fake-gcs-server's own server (its
// fakestorage package: buckets, objects, reads, lists, deletes, storage on
// disk) behind a front that adds the XML API object writes it lacks
// (fsouza/fake-gcs-server#331; object_store's GCS client writes only through
// them): a PUT of an object honouring x-goog-if-generation-match, and the
// XML multipart upload (initiate, parts, complete, abort). Everything else
// goes to fake-gcs-server unchanged.
package main

import (
	"bytes"
	"crypto/md5"
	"crypto/rand"
	"encoding/hex"
	"encoding/xml"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/fsouza/fake-gcs-server/fakestorage"
)

type upload struct {
	bucket, object string
	parts          map[int][]byte
}

type front struct {
	gcs     *fakestorage.Server
	backend http.Handler
	// Conditional writes check a generation, then write: one at a time.
	writes  sync.Mutex
	mu      sync.Mutex
	uploads map[string]*upload
}

func main() {
	host := flag.String("host", "127.0.0.1", "address to listen on")
	port := flag.Uint("port", 4443, "port to listen on")
	root := flag.String("filesystem-root", "", "directory holding the buckets (a bucket is a directory)")
	flag.Parse()
	if *root == "" {
		log.Fatal("-filesystem-root is required")
	}
	public := fmt.Sprintf("%s:%d", *host, *port)
	gcs, err := fakestorage.NewServerWithOptions(fakestorage.Options{
		StorageRoot: *root,
		Scheme:      "http",
		Host:        *host,
		Port:        uint16(*port),
		PublicHost:  public,
		ExternalURL: "http://" + public,
		NoListener:  true,
		Writer:      io.Discard,
	})
	if err != nil {
		log.Fatal(err)
	}
	listener, err := net.Listen("tcp", public)
	if err != nil {
		log.Fatal(err)
	}
	f := &front{gcs: gcs, backend: gcs.HTTPHandler(), uploads: map[string]*upload{}}
	go func() { log.Fatal(http.Serve(listener, f)) }()
	log.Printf("fake-gcs-server (with XML object writes) on http://%s, buckets in %s", public, *root)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
}

// bucketAndObject splits a path-style XML API path: /BUCKET/OBJECT.
func bucketAndObject(path string) (string, string, bool) {
	parts := strings.SplitN(strings.TrimPrefix(path, "/"), "/", 2)
	if len(parts) != 2 || parts[0] == "" || parts[1] == "" || parts[0] == "storage" ||
		parts[0] == "upload" || parts[0] == "download" || parts[0] == "_internal" {
		return "", "", false
	}
	return parts[0], parts[1], true
}

func (f *front) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	bucket, object, ok := bucketAndObject(r.URL.EscapedPath())
	if ok {
		bucket, object = unescape(bucket), unescape(object)
	}
	q := r.URL.Query()
	switch {
	case ok && r.Method == http.MethodPost && q.Has("uploads"):
		f.initiate(w, bucket, object)
	case ok && r.Method == http.MethodPut && q.Has("uploadId"):
		f.part(w, r, q.Get("uploadId"), q.Get("partNumber"))
	case ok && r.Method == http.MethodPost && q.Has("uploadId"):
		f.complete(w, r, bucket, object, q.Get("uploadId"))
	case ok && r.Method == http.MethodDelete && q.Has("uploadId"):
		f.mu.Lock()
		delete(f.uploads, q.Get("uploadId"))
		f.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	case ok && r.Method == http.MethodPut && len(q) == 0:
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		f.put(w, r, bucket, object, body)
	default:
		f.backend.ServeHTTP(w, r)
	}
}

func unescape(s string) string {
	out, err := url.PathUnescape(s)
	if err != nil {
		return s
	}
	return out
}

// put stores an object the way GCS's XML API does: ETag and generation in
// the answer, 412 when x-goog-if-generation-match names another generation
// (0: the object must not exist).
func (f *front) put(w http.ResponseWriter, r *http.Request, bucket, object string, body []byte) {
	f.writes.Lock()
	defer f.writes.Unlock()
	if want := r.Header.Get("x-goog-if-generation-match"); want != "" {
		current := int64(0)
		if obj, err := f.gcs.GetObject(bucket, object); err == nil {
			current = obj.Generation
		}
		if strconv.FormatInt(current, 10) != want {
			w.WriteHeader(http.StatusPreconditionFailed)
			fmt.Fprintf(w, "<Error><Code>PreconditionFailed</Code><Message>generation is %d, not %s</Message></Error>", current, want)
			return
		}
	}
	sum := md5.Sum(body)
	contentType := r.Header.Get("Content-Type")
	if contentType == "" {
		contentType = "application/octet-stream"
	}
	err := f.gcs.CreateObjectStreaming(fakestorage.StreamingObject{
		ObjectAttrs: fakestorage.ObjectAttrs{
			BucketName:  bucket,
			Name:        object,
			ContentType: contentType,
		},
		Content: readSeekNopCloser{bytes.NewReader(body)},
	})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	stored, err := f.gcs.GetObject(bucket, object)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("ETag", fmt.Sprintf("%q", hex.EncodeToString(sum[:])))
	w.Header().Set("x-goog-generation", strconv.FormatInt(stored.Generation, 10))
	w.WriteHeader(http.StatusOK)
}

type readSeekNopCloser struct{ *bytes.Reader }

func (readSeekNopCloser) Close() error { return nil }

func (f *front) initiate(w http.ResponseWriter, bucket, object string) {
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	uploadID := hex.EncodeToString(id)
	f.mu.Lock()
	f.uploads[uploadID] = &upload{bucket: bucket, object: object, parts: map[int][]byte{}}
	f.mu.Unlock()
	writeXML(w, struct {
		XMLName  xml.Name `xml:"InitiateMultipartUploadResult"`
		Bucket   string
		Key      string
		UploadId string
	}{Bucket: bucket, Key: object, UploadId: uploadID})
}

func (f *front) part(w http.ResponseWriter, r *http.Request, uploadID, number string) {
	n, err := strconv.Atoi(number)
	if err != nil || n < 1 {
		http.Error(w, "bad partNumber", http.StatusBadRequest)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	u := f.uploads[uploadID]
	if u != nil {
		u.parts[n] = body
	}
	f.mu.Unlock()
	if u == nil {
		http.Error(w, "no such upload", http.StatusNotFound)
		return
	}
	sum := md5.Sum(body)
	w.Header().Set("ETag", fmt.Sprintf("%q", hex.EncodeToString(sum[:])))
	w.WriteHeader(http.StatusOK)
}

func (f *front) complete(w http.ResponseWriter, r *http.Request, bucket, object, uploadID string) {
	var req struct {
		Parts []struct {
			PartNumber int
			ETag       string
		} `xml:"Part"`
	}
	if err := xml.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	u := f.uploads[uploadID]
	delete(f.uploads, uploadID)
	f.mu.Unlock()
	if u == nil || u.bucket != bucket || u.object != object {
		http.Error(w, "no such upload", http.StatusNotFound)
		return
	}
	sort.Slice(req.Parts, func(i, j int) bool { return req.Parts[i].PartNumber < req.Parts[j].PartNumber })
	var whole bytes.Buffer
	for _, p := range req.Parts {
		data, ok := u.parts[p.PartNumber]
		sum := md5.Sum(data)
		if !ok || strings.Trim(p.ETag, `"`) != hex.EncodeToString(sum[:]) {
			http.Error(w, fmt.Sprintf("part %d is missing or differs", p.PartNumber), http.StatusBadRequest)
			return
		}
		whole.Write(data)
	}
	rec := &recorder{header: http.Header{}}
	f.put(rec, r, bucket, object, whole.Bytes())
	if rec.status != http.StatusOK {
		w.WriteHeader(rec.status)
		w.Write(rec.body.Bytes())
		return
	}
	w.Header().Set("x-goog-generation", rec.header.Get("x-goog-generation"))
	writeXML(w, struct {
		XMLName  xml.Name `xml:"CompleteMultipartUploadResult"`
		Location string
		Bucket   string
		Key      string
		ETag     string
	}{Location: "http://" + r.Host + r.URL.Path, Bucket: bucket, Key: object, ETag: rec.header.Get("ETag")})
}

func writeXML(w http.ResponseWriter, v any) {
	out, err := xml.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(http.StatusOK)
	w.Write([]byte(xml.Header))
	w.Write(out)
}

// recorder keeps a response to pass on after a look at it.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header         { return r.header }
func (r *recorder) Write(b []byte) (int, error) { return r.body.Write(b) }
func (r *recorder) WriteHeader(status int)      { r.status = status }
