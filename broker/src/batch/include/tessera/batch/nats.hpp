// A thin C++ layer over the NATS C client (libnats): one connection with the
// options every `tessera batch` command shares (auth, TLS, reconnect forever),
// the JetStream context, and the work-queue stream, consumer and status bucket
// of one batch. Owning handles release their C object on destruction.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include <nats/nats.h>

#include <tessera/result.hpp>

namespace tessera::batch {

// How to reach the NATS server. Credentials travel only inside these fields and are
// never logged: use redact_url() for anything printed.
struct ConnectOptions {
  std::string url = "nats://127.0.0.1:4222";  // may carry user:password@ and a comma-separated list
  std::string creds_file;                     // NATS credentials file (JWT + nkey seed)
  std::string tls_ca;                         // CA bundle that signs the server's certificate
  std::string tls_cert, tls_key;              // client certificate (mutual TLS)
  std::string name = "tessera-batch";         // connection name shown by the server
  std::chrono::milliseconds connect_timeout{5'000};
  bool retry_initial_connect = false;         // node agents wait for a server that is not up yet
};

// The URL with any user:password@ replaced by ***@ (every URL of a comma-separated list).
std::string redact_url(const std::string& url);

// Names derived from the batch (stream) name: "<stream>.items" carries the work items,
// KV bucket "<stream>-status" holds one status entry per item.
struct BatchNames {
  std::string stream = "tessera";
  std::string consumer = "nodes";
  std::string subject() const { return stream + ".items"; }
  std::string bucket() const { return stream + "-status"; }
};
// Stream, consumer and bucket names: letters, digits, '-' and '_' only.
Result<void> validate(const BatchNames& names);

// Error from a libnats status, with the library's last error text.
Error nats_error(natsStatus s, const std::string& what, jsErrCode js = static_cast<jsErrCode>(0));

template <class T, void (*Destroy)(T*)>
struct NatsDeleter {
  void operator()(T* p) const noexcept {
    if (p) Destroy(p);
  }
};
using ConnPtr = std::unique_ptr<natsConnection, NatsDeleter<natsConnection, natsConnection_Destroy>>;
using JsPtr = std::unique_ptr<jsCtx, NatsDeleter<jsCtx, jsCtx_Destroy>>;
using KvPtr = std::unique_ptr<kvStore, NatsDeleter<kvStore, kvStore_Destroy>>;
using SubPtr = std::unique_ptr<natsSubscription, NatsDeleter<natsSubscription, natsSubscription_Destroy>>;
using MsgPtr = std::unique_ptr<natsMsg, NatsDeleter<natsMsg, natsMsg_Destroy>>;
using EntryPtr = std::unique_ptr<kvEntry, NatsDeleter<kvEntry, kvEntry_Destroy>>;

// One connection + JetStream context + status bucket for a batch.
class Session {
 public:
  static Result<std::unique_ptr<Session>> connect(const ConnectOptions& opts);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  natsConnection* conn() const noexcept { return conn_.get(); }
  jsCtx* js() const noexcept { return js_.get(); }
  bool connected() const noexcept;

  // Creates the work-queue stream (file storage, de-duplication window) or reuses it.
  Result<void> ensure_stream(const BatchNames& names, std::chrono::seconds dedup_window);
  // Creates the durable pull consumer (explicit ack, unlimited deliveries: the nodes
  // count attempts and terminate a poison item themselves) or reuses it.
  Result<void> ensure_consumer(const BatchNames& names, std::chrono::milliseconds ack_wait);
  // Binds to the status bucket, creating it when `create`.
  Result<kvStore*> status_bucket(const BatchNames& names, bool create);
  // AckWait of the existing consumer.
  Result<std::chrono::milliseconds> consumer_ack_wait(const BatchNames& names);
  // Messages still in the stream: items neither acknowledged nor terminated.
  Result<std::uint64_t> stream_messages(const BatchNames& names);

 private:
  Session() = default;
  natsOptions* opts_ = nullptr;
  ConnPtr conn_;
  JsPtr js_;
  KvPtr kv_;
};

}  // namespace tessera::batch
