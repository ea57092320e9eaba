# tests/tests.cmake — the test suite (included from CMakeLists.txt).
#
# Labels: unit (fast, pure C; also run under ASan+UBSan by `make test`), e2e (programs end to end),
# fuzz (libFuzzer harnesses, in the VMLA_FUZZ build), gpu (skipped cleanly without a GPU).

set(VMLA_TEST_ENV "VMLA_SOURCE_DIR=${CMAKE_SOURCE_DIR}" "VMLA_BUILD_DIR=${CMAKE_BINARY_DIR}")

function(vmla_unit name src)
  add_executable(${name} ${src} tests/check.h)
  target_link_libraries(${name} ${ARGN})
  add_test(NAME ${name} COMMAND ${name})
  set_tests_properties(${name} PROPERTIES LABELS unit ENVIRONMENT "${VMLA_TEST_ENV}" TIMEOUT 600)
endfunction()

if(NOT VMLA_FUZZ)
  vmla_unit(test_ops tests/kernels/test_ops.c vmla_kernels)
  vmla_unit(test_safetensors tests/engine/test_safetensors.c vmla_engine)
  vmla_unit(test_kvpool tests/engine/test_kvpool.c vmla_engine)
  vmla_unit(test_scheduler tests/engine/test_scheduler.c vmla_engine)
  vmla_unit(test_sched_engine tests/engine/test_sched_engine.c vmla_engine)
  vmla_unit(test_rng tests/engine/test_rng.c vmla_engine)
  vmla_unit(test_engine tests/engine/test_engine.c vmla_engine)
  vmla_unit(test_golden tests/engine/test_golden.c vmla_engine)
  vmla_unit(test_config tests/engine/test_config.c vmla_engine)
  vmla_unit(test_video_writer tests/server/test_video_writer.c vmla_media)
  vmla_unit(test_h264_stream tests/server/test_h264_stream.c vmla_media)
  vmla_unit(test_proto tests/proto/test_proto.c vmla_proto)

  add_test(NAME e2e_gen COMMAND bash ${CMAKE_SOURCE_DIR}/tests/e2e/gen.sh)
  add_test(NAME e2e_bench_kv COMMAND bash ${CMAKE_SOURCE_DIR}/tests/e2e/bench_kv.sh)
  add_test(NAME e2e_bench_serve COMMAND /usr/bin/python3 ${CMAKE_SOURCE_DIR}/tests/e2e/bench_serve.py)
  set_tests_properties(e2e_gen e2e_bench_kv e2e_bench_serve PROPERTIES LABELS e2e ENVIRONMENT "${VMLA_TEST_ENV}" TIMEOUT 600)
  add_test(NAME eval_judges COMMAND /usr/bin/python3 ${CMAKE_SOURCE_DIR}/tests/eval_test.py)
  set_tests_properties(eval_judges PROPERTIES LABELS unit TIMEOUT 300)
  if(EXISTS ${CMAKE_SOURCE_DIR}/models/vmla-tiny.safetensors)
    # the bundled models judged by the evaluator on CPU: prompt adherence at 5 s and stability at 60 s
    foreach(layout mla mha)
      if(layout STREQUAL "mla")
        set(p tiny)
        set(f vmla-tiny.safetensors)
      else()
        set(p tiny-mha)
        set(f vmla-tiny-mha.safetensors)
      endif()
      add_test(NAME eval_${layout} COMMAND /usr/bin/python3 ${CMAKE_SOURCE_DIR}/tools/eval/evaluate.py
               --gen $<TARGET_FILE:vmla-gen> --preset ${p} --model ${CMAKE_SOURCE_DIR}/models/${f}
               --held 8 --seen 2 --short-held 16 --short-seen 4 --seconds 60
               --json ${CMAKE_BINARY_DIR}/eval-${layout}.json)
      set_tests_properties(eval_${layout} PROPERTIES LABELS eval TIMEOUT 1200)
    endforeach()
  endif()
  if(VMLA_HAVE_SERVER)
    vmla_unit(test_drop_policy tests/server/test_drop_policy.c vmla_media vmla_proto vmla_engine Threads::Threads)
    target_sources(test_drop_policy PRIVATE server/session.c)
    target_compile_definitions(test_drop_policy PRIVATE _DEFAULT_SOURCE)
    # the real server on loopback with real clients (python3-websocket, ffprobe); the browser test
    # drives Debian's chromium through the DevTools protocol
    add_test(NAME server COMMAND /usr/bin/python3 ${CMAKE_SOURCE_DIR}/tests/server/test_server.py)
    add_test(NAME server_browser COMMAND /usr/bin/python3 ${CMAKE_SOURCE_DIR}/tests/server/test_browser.py)
    set_tests_properties(server server_browser PROPERTIES LABELS "e2e;server" ENVIRONMENT "${VMLA_TEST_ENV}"
                         TIMEOUT 900 RUN_SERIAL ON)
  endif()
else()
  # libFuzzer harnesses: each runs for VMLA_FUZZ_SECONDS over a copy of its seed corpus
  set(VMLA_FUZZ_SECONDS 20 CACHE STRING "seconds each fuzzer runs under ctest")
  add_executable(fuzz_safetensors tests/fuzz/fuzz_safetensors.c engine/safetensors.c)
  target_include_directories(fuzz_safetensors PRIVATE ${CMAKE_SOURCE_DIR})
  target_link_libraries(fuzz_safetensors PkgConfig::JANSSON)
  target_link_options(fuzz_safetensors PRIVATE -fsanitize=fuzzer)
  foreach(f proto_media proto_json)
    add_executable(fuzz_${f} tests/fuzz/fuzz_${f}.c proto/media.c proto/json.c)
    target_include_directories(fuzz_${f} PRIVATE ${CMAKE_SOURCE_DIR})
    target_link_libraries(fuzz_${f} PkgConfig::JANSSON)
    target_link_options(fuzz_${f} PRIVATE -fsanitize=fuzzer)
  endforeach()
  add_executable(fuzz_sampler tests/fuzz/fuzz_sampler.c engine/config.c)
  target_include_directories(fuzz_sampler PRIVATE ${CMAKE_SOURCE_DIR})
  target_link_libraries(fuzz_sampler m)
  target_link_options(fuzz_sampler PRIVATE -fsanitize=fuzzer)
  foreach(f safetensors proto_media proto_json sampler)
    add_test(NAME fuzz_${f}
      COMMAND bash ${CMAKE_SOURCE_DIR}/tests/fuzz/run.sh $<TARGET_FILE:fuzz_${f}>
              ${CMAKE_SOURCE_DIR}/tests/fuzz/corpus/${f} ${VMLA_FUZZ_SECONDS})
    set_tests_properties(fuzz_${f} PROPERTIES LABELS fuzz TIMEOUT 600)
  endforeach()
endif()
