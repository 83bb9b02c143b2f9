"""A stand-in for NVIDIA's trtexec, for the plumbing of the trtexec builder (no engine is built).

It refuses options its TensorRT major does not have, as the real tool exits on an unknown
option, so a typo or a flag of the other major fails a test. The option lists are trtexec's
from TensorRT 10's command-line reference; TensorRT 11 removed the precision flags and the
weak-typing options (NVIDIA's "Migrating trtexec Usage from TensorRT 10.x to 11.x")."""
from __future__ import annotations

import stat

TRT10_OPTIONS = {
    # model
    "--onnx",
    # build
    "--minShapes", "--optShapes", "--maxShapes", "--minShapesCalib", "--optShapesCalib", "--maxShapesCalib",
    "--inputIOFormats", "--outputIOFormats", "--memPoolSize", "--profilingVerbosity", "--avgTiming", "--refit",
    "--stripWeights", "--stripAllWeights", "--versionCompatible", "--pluginInstanceNorm", "--useRuntime",
    "--leanDLLPath", "--excludeLeanRuntime", "--sparsity", "--noTF32", "--fp16", "--bf16", "--int8", "--fp8",
    "--int4", "--fp4", "--best", "--stronglyTyped", "--directIO", "--precisionConstraints", "--layerPrecisions",
    "--layerOutputTypes", "--layerDeviceTypes", "--decomposableAttentions", "--calib", "--safe",
    "--buildDLAStandalone", "--allowGPUFallback", "--consistency", "--restricted", "--saveEngine", "--loadEngine",
    "--asyncFileReader", "--getPlanVersionOnly", "--tacticSources", "--noBuilderCache", "--noCompilationCache",
    "--errorOnTimingCacheMiss", "--timingCacheFile", "--preview", "--builderOptimizationLevel", "--maxTactics",
    "--hardwareCompatibilityLevel", "--runtimePlatform", "--maxAuxStreams", "--setPluginsToSerialize",
    "--dynamicPlugins", "--skipInference", "--tempdir", "--tempfileControls", "--weightStreaming", "--markDebug",
    "--markUnfusedTensorsAsDebugTensors", "--monitorMemory",
    # inference
    "--shapes", "--loadInputs", "--iterations", "--warmUp", "--duration", "--sleepTime", "--idleTime",
    "--infStreams", "--exposeDMA", "--noDataTransfers", "--useManagedMemory", "--useSpinWait", "--threads",
    "--useCudaGraph", "--timeDeserialize", "--timeRefit", "--separateProfileRun", "--persistentCacheRatio",
    "--allocationStrategy", "--saveDebugTensors", "--weightStreamingBudget",
    # reporting and system
    "--verbose", "--avgRuns", "--percentile", "--dumpRefit", "--dumpOutput", "--dumpRawBindingsToFile",
    "--dumpProfile", "--dumpLayerInfo", "--dumpOptimizationProfile", "--exportTimes", "--exportOutput",
    "--exportProfile", "--exportLayerInfo", "--device", "--useDLACore", "--staticPlugins", "--plugins",
    "--ignoreParsedPluginLibs", "--help",
}
TRT11_REMOVED = {"--fp16", "--bf16", "--int8", "--fp8", "--int4", "--fp4", "--best", "--calib", "--directIO",
                 "--precisionConstraints", "--layerPrecisions", "--layerOutputTypes"}
TRT11_OPTIONS = TRT10_OPTIONS - TRT11_REMOVED
BANNERS = {"10": "TensorRT v101300", "11": "TensorRT v110400"}


def _option_check(options: set[str]) -> str:
    """sh that exits 1 on the first argument not in `options`, as trtexec does."""
    cases = "|".join(sorted(options))
    return ('for arg in "$@"; do\n'
            '  name="${arg%%=*}"\n'
            '  case "$name" in\n'
            f'    {cases}) ;;\n'
            '    *) echo "[E] Unknown option: $name"; echo "&&&& FAILED TensorRT.trtexec"; exit 1 ;;\n'
            '  esac\n'
            'done\n')


def fake_trtexec(tmp_path, body: str, major: str = "10"):
    """A trtexec of TensorRT `major` for the plumbing only: it prints the banner, refuses
    options that major does not have, then does `body`."""
    tool = tmp_path / "bin" / "trtexec"
    tool.parent.mkdir(exist_ok=True)
    options = TRT11_OPTIONS if major == "11" else TRT10_OPTIONS
    tool.write_text("#!/bin/sh\n"
                    f'echo "&&&& RUNNING TensorRT.trtexec [{BANNERS[major]}] # trtexec $*"\n'
                    + _option_check(options) + body)
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return str(tool)


# Writes the engine; loads and saves the timing cache with the log lines real trtexec prints
# (samples/common: "Loaded N bytes of timing cache from F", "Could not read timing cache from: F").
WRITE_ENGINE = """for arg in "$@"; do
  case "$arg" in
    --timingCacheFile=*)
      cache="${arg#--timingCacheFile=}"
      if [ -s "$cache" ]; then echo "[I] Loaded $(wc -c < "$cache" | tr -d ' ') bytes of timing cache from $cache"
      else echo "[W] Could not read timing cache from: $cache. A new timing cache will be generated and written."; fi ;;
  esac
done
for arg in "$@"; do
  case "$arg" in
    --saveEngine=*) printf 'plan-bytes' > "${arg#--saveEngine=}" ;;
    --timingCacheFile=*) printf 'cache' >> "${arg#--timingCacheFile=}" ;;
  esac
done
echo "&&&& PASSED TensorRT.trtexec"
"""
