"""Koopman callbacks under tf.distribute: MultiWorkerMirroredStrategy with two worker processes
on 127.0.0.1, MirroredStrategy over two logical CPUs and OneDeviceStrategy against a plain run."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from helpers import TWO_CPUS_SCRIPT

WORKER = r'''
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np, tensorflow as tf
import keras, keras_koopman as kk

work = sys.argv[1]
strategy = tf.distribute.MultiWorkerMirroredStrategy()
rng = np.random.default_rng(0)
x = rng.normal(size=(128, 3)).astype("float32")
y = x @ np.array([[1.0], [-2.0], [0.5]], "float32")
with strategy.scope():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, name="dense")])
    optimizer = keras.optimizers.SGD(0.1)
    optimizer.build(model.trainable_variables)
monitor = kk.callbacks.KoopmanMonitor(window=8, log_dir=os.path.join(work, "logs"))
stop = kk.callbacks.KoopmanEarlyStopping(monitor, patience=2, min_epochs=5)
# Keras 3's fit does not run under MultiWorkerMirroredStrategy (keras-team/keras#20585), so
# this is the custom loop such users write, driving the callbacks through a CallbackList.
options = tf.data.Options()
options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
data = strategy.experimental_distribute_dataset(
    tf.data.Dataset.from_tensor_slices((x, y)).batch(32).with_options(options))

@tf.function
def train_step(batch):
    def replica_step(inputs, targets):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(inputs) - targets) ** 2)
            scaled = loss / strategy.num_replicas_in_sync
        gradients = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply(gradients, model.trainable_variables)
        return loss
    losses = strategy.run(replica_step, args=batch)
    return strategy.reduce(tf.distribute.ReduceOp.MEAN, losses, axis=None)

callbacks = keras.callbacks.CallbackList([monitor, stop], model=model)
model.stop_training = False
callbacks.on_train_begin()
epochs = 0
for epoch in range(100):
    callbacks.on_epoch_begin(epoch)
    losses = [float(train_step(batch)) for batch in data]
    callbacks.on_epoch_end(epoch, {"loss": float(np.mean(losses))})
    epochs += 1
    if model.stop_training:
        break
callbacks.on_train_end()
print("RESULT " + json.dumps({
    "chief": strategy.cluster_resolver.task_id == 0,
    "replicas": strategy.num_replicas_in_sync,
    "epochs": epochs, "stopped_epoch": stop.stopped_epoch,
    "steps": [r.step for r in monitor.history],
    "eigenvalues": [np.sort(np.abs(r.eigenvalues)).tolist() for r in monitor.history],
    "weights": [w.tolist() for w in model.get_weights()],
    "errors": monitor.errors,
}))
'''


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def result_of(output):
    line = next(li for li in output.splitlines() if li.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_multi_worker_mirrored_strategy_two_workers_same_decisions_chief_writes(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = dict(os.environ, TF_CONFIG=json.dumps(config), TF_CPP_MIN_LOG_LEVEL="2",
                   KERAS_BACKEND="tensorflow")
        processes.append(subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
    outputs = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=600)
            assert process.returncode == 0, err[-3000:]
            outputs.append(result_of(out))
    finally:
        for process in processes:
            process.kill()
    chief, other = outputs
    assert chief["chief"] and not other["chief"] and chief["replicas"] == 2
    assert not chief["errors"] and not other["errors"]
    # The same decision on both workers: an early stop, at the same epoch.
    assert 5 <= chief["stopped_epoch"] < 99
    assert chief["epochs"] == other["epochs"] == chief["stopped_epoch"] + 1
    assert chief["steps"] == other["steps"]
    np.testing.assert_allclose(chief["eigenvalues"], other["eigenvalues"], atol=1e-7)
    for a, b in zip(chief["weights"], other["weights"]):
        np.testing.assert_array_equal(a, b)
    # Only the chief wrote events.
    files = os.listdir(tmp_path / "logs")
    assert len(files) == 1 and files[0].startswith("events.out.tfevents")


STRATEGIES = TWO_CPUS_SCRIPT + r'''
y = np.tanh(x @ rng.normal(size=(4, 2))).astype("float32")
out = {}


def build(strategy):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)),
                                  keras.layers.Dense(8, activation="tanh", name="hidden"),
                                  keras.layers.Dense(2, name="out")])
        model.compile(keras.optimizers.SGD(0.05), "mse")
    return model


for name, strategy in [("default", tf.distribute.get_strategy()),
                       ("one_device", tf.distribute.OneDeviceStrategy("/cpu:0")),
                       ("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))]:
    model = build(strategy)
    monitor = kk.callbacks.KoopmanMonitor(window=6)
    stop = kk.callbacks.KoopmanEarlyStopping(monitor, patience=2, min_epochs=5)
    history = model.fit(x, y, epochs=12, batch_size=64, shuffle=False, verbose=0,
                        callbacks=[monitor, stop])
    out[name] = {"epochs": len(history.history["loss"]), "errors": monitor.errors,
                 "records": [[r.step, r.group, np.sort(np.abs(r.eigenvalues)).tolist()]
                             for r in monitor.history]}
    # Per-batch snapshots (inside the train function, or from the batch hook under a
    # strategy) against the weights an independent callback records after every batch.
    model = build(strategy)
    weights = []

    class Record(keras.callbacks.Callback):
        def record(self):
            layer = self.model.get_layer("hidden")
            weights.append(np.concatenate([layer.kernel.numpy().ravel(),
                                           layer.bias.numpy().ravel()]))
        def on_train_begin(self, logs=None):
            self.record()
        def on_train_batch_end(self, batch, logs=None):
            self.record()

    monitor = kk.callbacks.KoopmanMonitor(window=6, every=2)
    model.fit(x, y, epochs=3, batch_size=64, shuffle=False, verbose=0,
              callbacks=[Record(), monitor])
    expected = np.stack(weights)[[2, 4, 6, 8, 10, 12]]  # 12 batches, a snapshot every 2
    got = monitor.buffers["hidden"].snapshots().numpy()
    out[name]["per_batch"] = [monitor.step, float(np.max(np.abs(got - expected)))]
    if name == "mirrored":
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="tanh"),
                                      keras.layers.Dense(2)])
            pruned = kk.pruning.prune_koopman(model, 0.5)
            pruned.compile(keras.optimizers.SGD(0.05), "mse")
        update = kk.pruning.UpdateKoopmanPruning(window=4)
        pruned.fit(x, y, epochs=6, batch_size=64, verbose=0, callbacks=[update])
        copies = []
        for wrapper in kk.pruning.pruning_wrappers(pruned):
            for weight, mask in wrapper.masked:
                inner = getattr(weight, "value", weight)
                copies.append([v.numpy().tolist() for v in getattr(inner, "values", [inner])])
        out["pruning"] = {"updates": [u["criterion"] for u in update.updates],
                          "sparsity": [w.sparsity() for w in kk.pruning.pruning_wrappers(pruned)],
                          "copies": copies, "errors": update.monitor.errors}
print("RESULT " + json.dumps(out))
'''


def test_mirrored_and_one_device_strategies_give_the_spectra_of_a_plain_run():
    done = subprocess.run([sys.executable, "-c", STRATEGIES], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert done.returncode == 0, done.stderr[-3000:]
    result = result_of(done.stdout)
    plain = result["default"]
    assert plain["records"] and not plain["errors"]
    for name in ("one_device", "mirrored"):
        run = result[name]
        assert not run["errors"] and run["epochs"] == plain["epochs"]
    for name in ("default", "one_device", "mirrored"):
        step, deviation = result[name]["per_batch"]
        assert step == 6 and deviation < 1e-6, (name, step, deviation)
    for name in ("one_device", "mirrored"):
        run = result[name]
        assert [r[:2] for r in run["records"]] == [r[:2] for r in plain["records"]]
        for got, want in zip(run["records"], plain["records"]):
            np.testing.assert_allclose(got[2], want[2], atol=1e-4)  # float rounding only
    pruning = result["pruning"]
    assert pruning["updates"] == ["koopman"] and not pruning["errors"]
    kernels = [np.asarray(copies[0]) for copies in pruning["copies"]]
    zeros = sum(int((k == 0).sum()) for k in kernels) / sum(k.size for k in kernels)
    assert abs(zeros - 0.5) < 0.01  # the global target over all wrapped kernels
    for copies in pruning["copies"]:  # both replicas hold the same pruned weights
        assert len(copies) == 2
        np.testing.assert_array_equal(copies[0], copies[1])
