// NATS connection, JetStream stream/consumer/bucket set-up for `tessera batch`.
#include <tessera/batch/nats.hpp>

#include <spdlog/spdlog.h>

namespace tessera::batch {

std::string redact_url(const std::string& url) {
  std::string out;
  std::size_t start = 0;
  while (start <= url.size()) {
    std::size_t end = url.find(',', start);
    if (end == std::string::npos) end = url.size();
    std::string one = url.substr(start, end - start);
    const std::size_t scheme = one.find("://");
    const std::size_t host_from = scheme == std::string::npos ? 0 : scheme + 3;
    const std::size_t at = one.rfind('@');
    if (at != std::string::npos && at >= host_from) one = one.substr(0, host_from) + "***" + one.substr(at);
    out += (out.empty() && start == 0 ? "" : ",") + one;
    start = end + 1;
  }
  return out;
}

Result<void> validate(const BatchNames& names) {
  for (const std::string* s : {&names.stream, &names.consumer}) {
    if (s->empty() || s->size() > 64) return fail(Errc::invalid_argument, "batch: name '" + *s + "' must have 1-64 characters");
    for (char c : *s)
      if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_'))
        return fail(Errc::invalid_argument, "batch: name '" + *s + "' may contain only letters, digits, '-' and '_'");
  }
  return {};
}

Error nats_error(natsStatus s, const std::string& what, jsErrCode js) {
  std::string msg = what + ": " + natsStatus_GetText(s);
  natsStatus last = NATS_OK;
  if (const char* text = nats_GetLastError(&last); text && *text && std::string(text) != natsStatus_GetText(s))
    msg += std::string(" (") + text + ")";
  if (js != 0) msg += " [JetStream error " + std::to_string(static_cast<int>(js)) + "]";
  const Errc code = s == NATS_TIMEOUT ? Errc::timeout
                    : (s == NATS_NO_SERVER || s == NATS_CONNECTION_CLOSED || s == NATS_CONNECTION_DISCONNECTED ||
                       s == NATS_NO_RESPONDERS)
                        ? Errc::unavailable
                    : s == NATS_NOT_FOUND ? Errc::not_found
                                          : Errc::system;
  return Error{code, msg};
}

namespace {

void on_disconnected(natsConnection* nc, void*) {
  // Also called when we close the connection ourselves: only a live one reconnects.
  if (natsConnection_Status(nc) == NATS_CONN_STATUS_RECONNECTING) spdlog::warn("nats: disconnected; reconnecting");
}
void on_reconnected(natsConnection*, void*) { spdlog::info("nats: reconnected"); }
void on_connected(natsConnection*, void*) { spdlog::info("nats: connected"); }

}  // namespace

Result<std::unique_ptr<Session>> Session::connect(const ConnectOptions& o) {
  std::unique_ptr<Session> s(new Session());
  const std::string shown = redact_url(o.url);
  auto check = [&](natsStatus st, const char* what) -> Result<void> {
    if (st != NATS_OK) return fail(nats_error(st, std::string("nats ") + shown + ": " + what));
    return {};
  };
  if (auto r = check(natsOptions_Create(&s->opts_), "options"); !r) return fail(r.error());
  if (auto r = check(natsOptions_SetServers(s->opts_, nullptr, 0), "servers"); !r) return fail(r.error());
  if (auto r = check(natsOptions_SetURL(s->opts_, o.url.c_str()), "url"); !r) return fail(r.error());
  if (auto r = check(natsOptions_SetName(s->opts_, o.name.c_str()), "name"); !r) return fail(r.error());
  if (auto r = check(natsOptions_SetTimeout(s->opts_, o.connect_timeout.count()), "timeout"); !r) return fail(r.error());
  // Reconnect forever: a restarted server (or a fail-over to another cluster member)
  // must not end a node agent; work resumes when the connection is back.
  if (auto r = check(natsOptions_SetMaxReconnect(s->opts_, -1), "reconnect"); !r) return fail(r.error());
  if (auto r = check(natsOptions_SetReconnectWait(s->opts_, 250), "reconnect wait"); !r) return fail(r.error());
  natsOptions_SetDisconnectedCB(s->opts_, on_disconnected, nullptr);
  natsOptions_SetReconnectedCB(s->opts_, on_reconnected, nullptr);
  if (o.retry_initial_connect)
    if (auto r = check(natsOptions_SetRetryOnFailedConnect(s->opts_, true, on_connected, nullptr), "retry"); !r)
      return fail(r.error());
  if (!o.creds_file.empty())
    if (auto r = check(natsOptions_SetUserCredentialsFromFiles(s->opts_, o.creds_file.c_str(), nullptr), "credentials file");
        !r)
      return fail(r.error());
  if (!o.tls_ca.empty() || !o.tls_cert.empty()) {
    if (auto r = check(natsOptions_SetSecure(s->opts_, true), "TLS"); !r) return fail(r.error());
    if (!o.tls_ca.empty())
      if (auto r = check(natsOptions_LoadCATrustedCertificates(s->opts_, o.tls_ca.c_str()), "TLS CA file"); !r)
        return fail(r.error());
    if (!o.tls_cert.empty())
      if (auto r = check(natsOptions_LoadCertificatesChain(s->opts_, o.tls_cert.c_str(), o.tls_key.c_str()),
                         "TLS client certificate");
          !r)
        return fail(r.error());
  }
  natsConnection* nc = nullptr;
  const natsStatus st = natsConnection_Connect(&nc, s->opts_);
  // With retry_initial_connect the library keeps trying in the background and
  // reports NATS_NOT_YET_CONNECTED; the handle is usable and connects later.
  if (st != NATS_OK && !(o.retry_initial_connect && st == NATS_NOT_YET_CONNECTED))
    return fail(nats_error(st, "nats " + shown + ": cannot connect"));
  s->conn_.reset(nc);
  jsCtx* js = nullptr;
  jsOptions jo;
  jsOptions_Init(&jo);
  jo.Wait = 5'000;
  if (auto r = check(natsConnection_JetStream(&js, nc, &jo), "JetStream"); !r) return fail(r.error());
  s->js_.reset(js);
  return s;
}

Session::~Session() {
  kv_.reset();
  js_.reset();
  if (conn_) natsConnection_Close(conn_.get());
  conn_.reset();
  if (opts_) natsOptions_Destroy(opts_);
}

bool Session::connected() const noexcept { return conn_ && natsConnection_Status(conn_.get()) == NATS_CONN_STATUS_CONNECTED; }

Result<void> Session::ensure_stream(const BatchNames& names, std::chrono::seconds dedup_window) {
  jsStreamInfo* si = nullptr;
  jsErrCode jerr = static_cast<jsErrCode>(0);
  natsStatus st = js_GetStreamInfo(&si, js_.get(), names.stream.c_str(), nullptr, &jerr);
  if (st == NATS_OK) {
    jsStreamInfo_Destroy(si);
    return {};
  }
  if (st != NATS_NOT_FOUND) return fail(nats_error(st, "stream " + names.stream, jerr));
  const std::string subject = names.subject();
  const char* subjects[] = {subject.c_str()};
  jsStreamConfig cfg;
  jsStreamConfig_Init(&cfg);
  cfg.Name = names.stream.c_str();
  cfg.Subjects = subjects;
  cfg.SubjectsLen = 1;
  cfg.Retention = js_WorkQueuePolicy;  // an item leaves the stream when acked or terminated
  cfg.Storage = js_FileStorage;        // survives a server restart
  cfg.Duplicates = std::chrono::duration_cast<std::chrono::nanoseconds>(dedup_window).count();
  st = js_AddStream(&si, js_.get(), &cfg, nullptr, &jerr);
  if (st != NATS_OK) {
    // Another submitter may have created it at the same moment.
    if (js_GetStreamInfo(&si, js_.get(), names.stream.c_str(), nullptr, nullptr) == NATS_OK) {
      jsStreamInfo_Destroy(si);
      return {};
    }
    return fail(nats_error(st, "cannot create stream " + names.stream, jerr));
  }
  jsStreamInfo_Destroy(si);
  return {};
}

Result<void> Session::ensure_consumer(const BatchNames& names, std::chrono::milliseconds ack_wait) {
  jsConsumerInfo* ci = nullptr;
  jsErrCode jerr = static_cast<jsErrCode>(0);
  natsStatus st = js_GetConsumerInfo(&ci, js_.get(), names.stream.c_str(), names.consumer.c_str(), nullptr, &jerr);
  if (st == NATS_OK) {
    jsConsumerInfo_Destroy(ci);
    return {};
  }
  if (st != NATS_NOT_FOUND) return fail(nats_error(st, "consumer " + names.consumer, jerr));
  const std::string subject = names.subject();
  jsConsumerConfig cc;
  jsConsumerConfig_Init(&cc);
  cc.Durable = names.consumer.c_str();
  cc.AckPolicy = js_AckExplicit;
  cc.AckWait = std::chrono::duration_cast<std::chrono::nanoseconds>(ack_wait).count();
  cc.MaxDeliver = -1;  // nodes terminate poison items after --max-attempts (with a recorded reason)
  cc.FilterSubject = subject.c_str();
  cc.DeliverPolicy = js_DeliverAll;
  st = js_AddConsumer(&ci, js_.get(), names.stream.c_str(), &cc, nullptr, &jerr);
  if (st != NATS_OK) {
    if (js_GetConsumerInfo(&ci, js_.get(), names.stream.c_str(), names.consumer.c_str(), nullptr, nullptr) == NATS_OK) {
      jsConsumerInfo_Destroy(ci);
      return {};
    }
    return fail(nats_error(st, "cannot create consumer " + names.consumer, jerr));
  }
  jsConsumerInfo_Destroy(ci);
  return {};
}

Result<std::chrono::milliseconds> Session::consumer_ack_wait(const BatchNames& names) {
  jsConsumerInfo* ci = nullptr;
  jsErrCode jerr = static_cast<jsErrCode>(0);
  const natsStatus st = js_GetConsumerInfo(&ci, js_.get(), names.stream.c_str(), names.consumer.c_str(), nullptr, &jerr);
  if (st != NATS_OK) return fail(nats_error(st, "consumer " + names.stream + "/" + names.consumer, jerr));
  const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::nanoseconds(ci->Config->AckWait));
  jsConsumerInfo_Destroy(ci);
  return wait;
}

Result<std::uint64_t> Session::stream_messages(const BatchNames& names) {
  jsStreamInfo* si = nullptr;
  jsErrCode jerr = static_cast<jsErrCode>(0);
  const natsStatus st = js_GetStreamInfo(&si, js_.get(), names.stream.c_str(), nullptr, &jerr);
  if (st != NATS_OK) return fail(nats_error(st, "stream " + names.stream, jerr));
  const std::uint64_t n = si->State.Msgs;
  jsStreamInfo_Destroy(si);
  return n;
}

Result<kvStore*> Session::status_bucket(const BatchNames& names, bool create) {
  if (kv_) return kv_.get();
  kvStore* kv = nullptr;
  const std::string bucket = names.bucket();
  natsStatus st = js_KeyValue(&kv, js_.get(), bucket.c_str());
  if (st == NATS_NOT_FOUND && create) {
    kvConfig cfg;
    kvConfig_Init(&cfg);
    cfg.Bucket = bucket.c_str();
    cfg.History = 1;
    cfg.StorageType = js_FileStorage;
    st = js_CreateKeyValue(&kv, js_.get(), &cfg);
    if (st != NATS_OK) st = js_KeyValue(&kv, js_.get(), bucket.c_str());  // a concurrent submitter made it
  }
  if (st != NATS_OK) return fail(nats_error(st, "status bucket " + bucket));
  kv_.reset(kv);
  return kv;
}

}  // namespace tessera::batch
