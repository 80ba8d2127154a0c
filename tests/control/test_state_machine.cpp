// Per-task state machine: LAUNCH -> UPDATE* -> exactly one terminal.
#include <tessera/appose.hpp>

#include <gtest/gtest.h>

namespace ap = tessera::appose;
using RT = ap::ResponseType;
using V = ap::Verdict;

TEST(TaskStateMachine, NormalSequenceIsForwarded) {
  ap::TaskStateMachine m;
  EXPECT_EQ(m.on_response(RT::launch), V::forward);
  EXPECT_EQ(m.on_response(RT::update), V::forward);
  EXPECT_EQ(m.on_response(RT::update), V::forward);
  EXPECT_EQ(m.on_response(RT::completion), V::forward);
  EXPECT_TRUE(m.done());
  EXPECT_EQ(m.terminal(), RT::completion);
}

TEST(TaskStateMachine, CancelationThenCompletionDropsTheSecondTerminal) {
  ap::TaskStateMachine m;
  EXPECT_EQ(m.on_response(RT::launch), V::forward);
  EXPECT_EQ(m.on_response(RT::cancelation), V::forward);
  EXPECT_EQ(m.on_response(RT::completion), V::drop_after_terminal);
  EXPECT_EQ(m.terminal(), RT::cancelation);
}

TEST(TaskStateMachine, FailureThenLaunchIsDropped) {
  ap::TaskStateMachine m;
  EXPECT_EQ(m.on_response(RT::launch), V::forward);
  EXPECT_EQ(m.on_response(RT::failure), V::forward);
  EXPECT_EQ(m.on_response(RT::launch), V::drop_after_terminal);
  EXPECT_EQ(m.on_response(RT::update), V::drop_after_terminal);
  EXPECT_EQ(m.terminal(), RT::failure);
}

TEST(TaskStateMachine, DuplicateLaunchIsDropped) {
  ap::TaskStateMachine m;
  EXPECT_EQ(m.on_response(RT::launch), V::forward);
  EXPECT_EQ(m.on_response(RT::launch), V::drop_duplicate_launch);
  EXPECT_FALSE(m.done());
}

TEST(TaskStateMachine, TerminalBeforeLaunchGetsASynthesizedLaunch) {
  ap::TaskStateMachine m;
  EXPECT_EQ(m.on_response(RT::failure), V::forward_after_launch);
  EXPECT_TRUE(m.done());
  EXPECT_EQ(m.on_response(RT::failure), V::drop_after_terminal);
}

TEST(TaskStateMachine, UpdateBeforeLaunchGetsASynthesizedLaunch) {
  ap::TaskStateMachine m;
  EXPECT_EQ(m.on_response(RT::update), V::forward_after_launch);
  EXPECT_EQ(m.phase(), ap::TaskPhase::launched);
  EXPECT_EQ(m.on_response(RT::launch), V::drop_duplicate_launch);
}

TEST(TaskStateMachine, ExactlyOneTerminalOverAnyStream) {
  // Exhaustive over all streams of length <= 5: at most one terminal is forwarded,
  // and a LAUNCH (real or synthesized) precedes everything forwarded.
  const RT all[] = {RT::launch, RT::update, RT::completion, RT::cancelation, RT::failure};
  int streams = 0;
  for (int len = 1; len <= 5; ++len) {
    int total = 1;
    for (int i = 0; i < len; ++i) total *= 5;
    for (int code = 0; code < total; ++code) {
      ap::TaskStateMachine m;
      int terminals = 0, launches = 0, c = code;
      for (int i = 0; i < len; ++i, c /= 5) {
        const RT t = all[c % 5];
        const V v = m.on_response(t);
        if (ap::is_drop(v)) continue;
        if (v == V::forward_after_launch) ++launches;
        if (t == RT::launch) ++launches;
        if (t != RT::launch) {
          ASSERT_EQ(launches, 1);
        }
        if (ap::is_terminal(t)) ++terminals;
      }
      ASSERT_LE(terminals, 1);
      ASSERT_LE(launches, 1);
      ++streams;
    }
  }
  EXPECT_EQ(streams, 5 + 25 + 125 + 625 + 3125);
}
