// Runs on the audio thread: turns the microphone's float samples into 16-bit PCM chunks of
// 100 ms and measures their level, so the page thread only forwards bytes.
class PcmCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.chunk = options.processorOptions.chunkSamples;
    this.buffer = new Int16Array(this.chunk);
    this.filled = 0;
    this.peak = 0;
    this.squares = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    if (channels && channels.length) {
      const samples = channels[0]; // mono: getUserMedia asks for one channel
      for (let i = 0; i < samples.length; i++) {
        const sample = Math.max(-1, Math.min(1, samples[i]));
        this.buffer[this.filled++] = sample < 0 ? sample * 0x8000 : sample * 0x7fff;
        const magnitude = Math.abs(sample);
        if (magnitude > this.peak) this.peak = magnitude;
        this.squares += sample * sample;
        if (this.filled === this.chunk) {
          const pcm = this.buffer.buffer;
          this.port.postMessage({ pcm, peak: this.peak, rms: Math.sqrt(this.squares / this.chunk) }, [pcm]);
          this.buffer = new Int16Array(this.chunk);
          this.filled = 0;
          this.peak = 0;
          this.squares = 0;
        }
      }
    }
    return true; // keep running while the page holds the node
  }
}

registerProcessor("pcm-capture", PcmCapture);
