// Happens-before edges that ThreadSanitizer cannot see on its own.
//
// The distribution's gRPC is not built with ThreadSanitizer: when it runs a reactor's callback on
// another thread than the one that started the operation, the hand-off goes through its own
// uninstrumented atomics, and TSAN reports the reactor's members as racing between the two
// threads. gRPC guarantees that order (an operation's callback runs after the operation was
// started; OnDone after every other callback), so the service states it where it relies on it:
// HappensBefore(p) before starting a gRPC operation whose callback touches the state at p,
// HappensAfter(p) first thing in that callback. Both compile to nothing without TSAN.
//
// Hand-written rather than Abseil's dynamic annotations: those expand to nothing unless Abseil
// itself was built with the annotations on, which the distribution's is not.
#pragma once

#if defined(__SANITIZE_THREAD__)
#define SPECPRUNE_TSAN_ANNOTATIONS 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SPECPRUNE_TSAN_ANNOTATIONS 1
#endif
#endif

#ifdef SPECPRUNE_TSAN_ANNOTATIONS
#include <sanitizer/tsan_interface.h>
#endif

namespace specprune {

// Everything this thread did so far happens before what a later HappensAfter(p) thread does.
inline void HappensBefore(const void* p) {
#ifdef SPECPRUNE_TSAN_ANNOTATIONS
  __tsan_release(const_cast<void*>(p));
#else
  (void)p;
#endif
}

// Orders this thread after every HappensBefore(p) so far.
inline void HappensAfter(const void* p) {
#ifdef SPECPRUNE_TSAN_ANNOTATIONS
  __tsan_acquire(const_cast<void*>(p));
#else
  (void)p;
#endif
}

}  // namespace specprune
