#include "bench/loadgen_robot.h"

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "image/image_codec.h"

namespace specprune::loadgen {

std::chrono::system_clock::time_point DeadlineIn(Clock::duration d) {
  return std::chrono::system_clock::now() +
         std::chrono::duration_cast<std::chrono::system_clock::duration>(d);
}

std::string CodeName(grpc::StatusCode code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

Robot::Robot(int index, const LoadgenOptions& opts, const ServingShape& shape,
             std::shared_ptr<grpc::Channel> channel, RunControl* control)
    : index_(index),
      opts_(opts),
      shape_(shape),
      stub_(v1::VlaService::NewStub(channel)),
      control_(control),
      instruction_(Instruction(opts.seed, index)) {}

void Robot::Run() {
  bool passed_barrier = false;
  auto barrier = [&] {
    if (passed_barrier) return;
    passed_barrier = true;
    control_->warmed_up.DecrementCount();
    control_->measuring.WaitForNotification();
    next_send_.reset();  // the measured window starts with staggered robots again
  };
  for (int e = 0;; ++e) {
    if (opts_.duration_s == 0 && e >= opts_.episodes) break;
    if (Expired(passed_barrier)) break;
    const int id_number =
        static_cast<int>((static_cast<int64_t>(e) * opts_.robots + index_) % opts_.robot_id_pool);
    const std::string robot_id = absl::StrCat(opts_.run_tag, "-robot", id_number);
    if (e % 2 == 1) DoReset(robot_id);
    const std::string episode_id = absl::StrCat(opts_.run_tag, "-r", index_, "-e", e);
    const Scene scene(opts_.seed, index_, e, shape_.image_size);
    stats_.episodes += 1;
    // Forward passes of this episode known to have run on the server;
    // kUnknown after a failed call.
    int64_t passes = 0;
    for (int step = 0; step < opts_.steps; ++step) {
      if (stats_.sent == opts_.warmup) barrier();
      Pace();
      if (Expired(passed_barrier)) break;
      DoStep(robot_id, episode_id, static_cast<uint64_t>(step), scene, passed_barrier, &passes);
    }
    if (Expired(passed_barrier)) break;
  }
  barrier();  // a robot that stopped early still releases the others
}

bool Robot::Expired(bool measuring) const {
  return measuring && control_->measure_end && Clock::now() >= *control_->measure_end;
}

// A robot's steps are due one period apart; the first one of the run (and of the measured window)
// is staggered by index / robots of a period, as independent robots are not in phase. A robot
// whose answer came late sends at once and is due again one period later (no catch-up burst).
void Robot::Pace() {
  if (opts_.rate_hz <= 0) return;
  const auto period = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(1.0 / opts_.rate_hz));
  const auto now = Clock::now();
  if (!next_send_) next_send_ = now + period * index_ / opts_.robots;
  if (*next_send_ > now) std::this_thread::sleep_until(*next_send_);
  next_send_ = std::max(*next_send_, now) + period;
}

void Robot::DoReset(const std::string& robot_id) {
  v1::ResetRequest req;
  req.set_robot_id(robot_id);
  v1::ResetResponse resp;
  grpc::ClientContext ctx;
  AddCallMetadata(opts_, &ctx, robot_id);
  ctx.set_deadline(DeadlineIn(std::chrono::milliseconds(opts_.deadline_ms)));
  grpc::Status s = stub_->Reset(&ctx, req, &resp);
  if (s.ok()) {
    stats_.resets += 1;
  } else {
    stats_.reset_errors += 1;
    stats_.errors[absl::StrCat("Reset:", CodeName(s.error_code()))] += 1;
  }
}

void Robot::Mismatch(const std::string& what) {
  stats_.mismatches += 1;
  if (stats_.mismatch_examples.size() < 5) stats_.mismatch_examples.push_back(what);
}

void FillRequest(const LoadgenOptions& opts, const ServingShape& shape,
                 const std::string& instruction, const std::string& robot_id,
                 const std::string& episode_id, uint64_t step, const Scene& scene,
                 v1::PredictRequest* req) {
  req->Clear();
  req->set_robot_id(robot_id);
  req->set_episode_id(episode_id);
  req->set_step(step);
  req->set_instruction(instruction);
  if (opts.method != v1::PRUNING_METHOD_UNSPECIFIED) {
    req->mutable_pruning()->set_method(opts.method);
  }
  for (size_t c = 0; c < shape.cameras.size(); ++c) {
    v1::Image* img = req->add_images();
    img->set_camera(shape.cameras[c]);
    if (opts.encoding == "raw") {
      v1::RawImage* raw = img->mutable_raw();
      raw->set_height(shape.image_size);
      raw->set_width(shape.image_size);
      raw->set_channels(3);
      scene.Render(static_cast<int>(c), step, raw->mutable_pixels());
    } else {
      RgbImage rgb;
      rgb.height = rgb.width = shape.image_size;
      std::string buf;
      scene.Render(static_cast<int>(c), step, &buf);
      rgb.pixels.assign(buf.begin(), buf.end());
      auto enc = opts.encoding == "png" ? EncodePng(rgb) : EncodeJpeg(rgb, 90);
      // Encoding a valid synthetic frame cannot fail; an error here is a bug
      // worth seeing.
      if (!enc.ok()) {
        std::fprintf(stderr, "specprune_loadgen: encoding failed: %s\n",
                     std::string(enc.status().message()).c_str());
        std::abort();
      }
      img->set_encoded(std::move(*enc));
    }
  }
  scene.Proprio(step, shape.proprio_dim, req->mutable_proprio());
}

void Robot::BuildRequest(const std::string& robot_id, const std::string& episode_id, uint64_t step,
                         const Scene& scene) {
  FillRequest(opts_, shape_, instruction_, robot_id, episode_id, step, scene, &req_);
}

void Robot::DoStep(const std::string& robot_id, const std::string& episode_id, uint64_t step,
                   const Scene& scene, bool measured, int64_t* passes) {
  BuildRequest(robot_id, episode_id, step, scene);
  v1::PredictResponse resp;
  grpc::ClientContext ctx;
  AddCallMetadata(opts_, &ctx, robot_id);
  const auto t0 = Clock::now();
  ctx.set_deadline(DeadlineIn(std::chrono::milliseconds(opts_.deadline_ms)));
  grpc::Status s = stub_->Predict(&ctx, req_, &resp);
  const auto t1 = Clock::now();
  stats_.sent += 1;
  if (measured) {
    stats_.measured += 1;
    stats_.last_done = t1;
  }
  if (!s.ok()) {
    stats_.errors[CodeName(s.error_code())] += 1;
    if (s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
        s.error_code() == grpc::StatusCode::UNAVAILABLE ||
        s.error_code() == grpc::StatusCode::CANCELLED) {
      stats_.lost += 1;
    }
    *passes = kUnknown;  // the server may or may not have computed it
    return;
  }
  stats_.ok_total += 1;
  Verify(resp, passes);
  if (!measured) return;
  stats_.ok += 1;
  stats_.latency_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  const v1::StageTimings& t = resp.timings();
  stats_.preprocess_ms.push_back(1e3 * t.preprocess_seconds());
  stats_.queue_ms.push_back(1e3 * t.queue_seconds());
  stats_.vision_ms.push_back(1e3 * t.vision_seconds());
  stats_.llm_ms.push_back(1e3 * t.llm_seconds());
  stats_.action_head_ms.push_back(1e3 * t.action_head_seconds());
  stats_.total_ms.push_back(1e3 * t.total_seconds());
  stats_.retained_sum += resp.retained_vision_tokens();
  stats_.total_tokens_sum += resp.total_vision_tokens();
  stats_.flops_ratio_sum += resp.pruning().flops_ratio();
  if (resp.pruning().used_fallback()) stats_.fallback_passes += 1;
  stats_.modes[v1::ControllerMode_Name(resp.controller_mode())] += 1;
}

void Robot::Verify(const v1::PredictResponse& resp, int64_t* passes) {
  const std::string where = absl::StrFormat("robot %s episode %s step %d: ", req_.robot_id(),
                                            req_.episode_id(), req_.step());
  if (resp.session_restarted()) stats_.session_restarted += 1;
  if (resp.robot_id() != req_.robot_id() || resp.episode_id() != req_.episode_id() ||
      resp.step() != req_.step()) {
    Mismatch(absl::StrFormat("%sanswer is for robot %s episode %s step %d", where, resp.robot_id(),
                             resp.episode_id(), resp.step()));
    *passes = kUnknown;
    return;
  }
  if (resp.chunk_size() != shape_.chunk_size || resp.action_dim() != shape_.action_dim ||
      static_cast<uint64_t>(resp.actions_size()) !=
          static_cast<uint64_t>(shape_.chunk_size) * shape_.action_dim) {
    Mismatch(absl::StrFormat("%s%d actions as %d x %d, expected %d x %d", where,
                             resp.actions_size(), resp.chunk_size(), resp.action_dim(),
                             shape_.chunk_size, shape_.action_dim));
    *passes = kUnknown;
    return;
  }
  for (float a : resp.actions()) {
    if (!std::isfinite(a)) {
      Mismatch(absl::StrCat(where, "non-finite action"));
      *passes = kUnknown;
      return;
    }
  }
  if (resp.cached()) {
    Mismatch(absl::StrCat(where, "cached answer for a step sent once"));
    *passes = kUnknown;
    return;
  }
  if ((shape_.vision_tokens != 0 && resp.total_vision_tokens() != shape_.vision_tokens) ||
      resp.retained_vision_tokens() > resp.total_vision_tokens()) {
    Mismatch(absl::StrFormat("%sretained/total vision tokens %d/%d, model has %d", where,
                             resp.retained_vision_tokens(), resp.total_vision_tokens(),
                             shape_.vision_tokens));
    *passes = kUnknown;
    return;
  }
  // A fresh server-side session (evicted or expired) restarts the count at 1.
  const int64_t expected =
      resp.session_restarted() ? 1 : (*passes == kUnknown ? kUnknown : *passes + 1);
  if (expected != kUnknown && resp.episode_steps() != static_cast<uint64_t>(expected)) {
    Mismatch(
        absl::StrFormat("%sepisode_steps %d, expected %d", where, resp.episode_steps(), expected));
  }
  *passes = static_cast<int64_t>(resp.episode_steps());
}

namespace {
constexpr int kFloodFrames = 16;
}  // namespace

Flooder::Flooder(int index, const LoadgenOptions& opts, const ServingShape& shape,
                 std::shared_ptr<grpc::Channel> channel)
    : index_(index), opts_(opts), stub_(std::move(channel)) {
  // Robot number `robots + index` of the seed: a scene and instruction no robot uses.
  const int robot = opts.robots + index;
  const Scene scene(opts.seed, robot, 0, shape.image_size);
  const std::string instruction = Instruction(opts.seed, robot);
  frames_.reserve(kFloodFrames);
  for (int i = 0; i < kFloodFrames; ++i) {
    v1::PredictRequest req;
    FillRequest(opts, shape, instruction, "", absl::StrCat(opts.run_tag, "-flood", index, "-e0"),
                static_cast<uint64_t>(i), scene, &req);
    // Encoded once without robot_id and step; each call appends them (see EncodeCall).
    req.clear_robot_id();
    req.clear_step();
    frames_.emplace_back(req.SerializeAsString());
  }
}

grpc::ByteBuffer Flooder::EncodeCall(const std::string& robot_id, uint64_t step) const {
  // Protobuf parses concatenated messages as one merged message (a later scalar field wins), so
  // the pre-encoded frame followed by a message holding only robot_id and step is the frame's
  // request for that robot and step: the flooder does not re-encode the images every call.
  v1::PredictRequest tail;
  tail.set_robot_id(robot_id);
  tail.set_step(step);
  const grpc::Slice slices[2] = {frames_[step % kFloodFrames],
                                 grpc::Slice(tail.SerializeAsString())};
  return grpc::ByteBuffer(slices, 2);
}

void Flooder::Run(const absl::Notification* stop) {
  const auto t0 = Clock::now();
  std::vector<FloodStats> slots(static_cast<size_t>(opts_.flood_inflight));
  std::vector<std::thread> threads;
  for (FloodStats& slot : slots) threads.emplace_back([this, stop, &slot] { Slot(stop, &slot); });
  for (auto& t : threads) t.join();
  stats_ = FloodStats();
  for (const FloodStats& s : slots) {
    stats_.sent += s.sent;
    stats_.ok += s.ok;
    for (const auto& [k, v] : s.codes) stats_.codes[k] += v;
    stats_.latency_ms.insert(stats_.latency_ms.end(), s.latency_ms.begin(), s.latency_ms.end());
    stats_.seconds = std::max(stats_.seconds, s.seconds);
  }
  if (stats_.seconds == 0)
    stats_.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
}

void Flooder::Slot(const absl::Notification* stop, FloodStats* out) {
  const auto t_start = Clock::now();
  std::mutex mu;
  std::condition_variable cv;
  while (!stop->HasBeenNotified()) {
    const uint64_t n = next_call_.fetch_add(1, std::memory_order_relaxed);
    uint64_t step = n;
    std::string robot_id = absl::StrCat(opts_.run_tag, "-flood", index_);
    if (opts_.flood_distinct_ids) {
      const uint64_t pool = static_cast<uint64_t>(opts_.flood_id_pool);
      absl::StrAppend(&robot_id, "-id", n % pool);
      step = n / pool;
    }
    const grpc::ByteBuffer request = EncodeCall(robot_id, step);
    grpc::ByteBuffer response;  // counted by code only, never parsed
    grpc::ClientContext ctx;
    AddCallMetadata(opts_, &ctx, robot_id);
    const auto t0 = Clock::now();
    ctx.set_deadline(DeadlineIn(std::chrono::milliseconds(opts_.deadline_ms)));
    grpc::Status s;
    bool done = false;
    stub_.UnaryCall(&ctx, "/specprune.v1.VlaService/Predict", grpc::StubOptions(), &request,
                    &response, [&](grpc::Status status) {
                      std::lock_guard<std::mutex> lock(mu);
                      s = std::move(status);
                      done = true;
                      cv.notify_one();
                    });
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return done; });
    }
    const auto t1 = Clock::now();
    out->sent += 1;
    out->codes[CodeName(s.error_code())] += 1;
    out->seconds = std::chrono::duration<double>(t1 - t_start).count();
    if (s.ok()) {
      out->ok += 1;
      out->latency_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    }
  }
}

}  // namespace specprune::loadgen
