"""The one page of ``difflab serve``: plain HTML, CSS and JavaScript, no external resources (works offline)."""

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>difflab</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px system-ui,sans-serif;margin:0;background:#f4f4f6;color:#222}
header{background:#263238;color:#fff;padding:10px 18px}header b{font-size:17px}header span{opacity:.8;margin-left:12px}
main{display:flex;flex-wrap:wrap;gap:16px;padding:16px}
section{background:#fff;border-radius:8px;padding:14px;box-shadow:0 1px 3px #0002}
section.controls{width:270px}section.out{flex:1;min-width:320px}section.edit{width:340px}
label{display:block;margin:8px 0 2px;font-weight:600}input,select,button{font:inherit;box-sizing:border-box}
input[type=number],input[type=text],select{width:100%;padding:4px}
button{margin-top:12px;padding:6px 14px;border:0;border-radius:5px;background:#1e88e5;color:#fff;cursor:pointer}
button:disabled{background:#90a4ae}
#error,#edit-error{color:#b71c1c;background:#ffebee;border-radius:5px;padding:6px;margin-top:10px;display:none}
#result{image-rendering:pixelated;width:360px;max-width:100%;border:1px solid #ddd;margin-top:8px}
#previews img{image-rendering:pixelated;height:64px;margin:2px;border:1px solid #ddd}
#canvas{image-rendering:pixelated;border:1px solid #999;cursor:crosshair;touch-action:none;width:288px;height:288px}
.row{display:flex;gap:8px}.row>*{flex:1}.hint{color:#666;font-size:12px}a.dl{margin-right:12px}
</style></head><body>
<header><b>difflab</b><span id="runinfo">loading...</span></header>
<main>
<section class="controls">
  <label for="sampler">Sampler</label><select id="sampler"></select>
  <div class="row"><div><label for="steps">Steps</label><input id="steps" type="number" value="20"></div>
  <div><label for="num">Samples</label><input id="num" type="number" value="16"></div></div>
  <label for="seed">Seed</label><input id="seed" type="number" value="0">
  <div id="labelbox" style="display:none"><label for="label">Label</label><select id="label"></select></div>
  <div id="promptbox" style="display:none"><label for="prompt">Prompt</label><input id="prompt" type="text"></div>
  <div id="guidebox" style="display:none"><label for="guidance">Guidance scale</label>
  <input id="guidance" type="number" value="0" step="0.5"></div>
  <button id="generate">Generate</button>
  <div id="error" role="alert"></div>
</section>
<section class="out">
  <div id="status">Set the controls and press Generate.</div>
  <img id="result" alt="samples" style="display:none">
  <div id="downloads" style="display:none;margin-top:6px"><a class="dl" id="dl-png" download>PNG</a><a class="dl" id="dl-npz" download>NPZ</a></div>
  <label>x0 estimate step by step</label><div id="previews"></div>
</section>
<section class="edit">
  <label for="task">Edit</label><select id="task"></select>
  <div class="hint" id="taskhint"></div>
  <div class="row"><button id="use-sample" type="button">Use first sample</button>
  <input id="upload" type="file" accept="image/png,image/jpeg" style="margin-top:12px"></div>
  <canvas id="canvas" width="288" height="288"></canvas>
  <div class="row"><div><label for="brush">Brush</label><input id="brush" type="number" value="2" min="1"></div>
  <div><label for="color">Stroke colour</label><input id="color" type="color" value="#ffffff"></div></div>
  <label for="strength">SDEdit strength <span id="strength-v">0.5</span></label>
  <input id="strength" type="range" min="0" max="1" step="0.05" value="0.5" style="width:100%">
  <div class="row"><button id="clear" type="button">Clear drawing</button><button id="run-edit">Run edit</button></div>
  <div id="edit-error" role="alert"></div>
</section>
</main>
<script>
"use strict";
const $ = id => document.getElementById(id);
let info = null, lastJob = null, firstSample = null;
let W = 8, H = 8, inW = 8, inH = 8;
const img = document.createElement("canvas"), mask = document.createElement("canvas"), strokes = document.createElement("canvas");
function showError(box, msg){ const e=$(box); e.textContent=msg||""; e.style.display=msg?"block":"none"; }
async function api(path, body){
  const r = await fetch(path, body===undefined?{}:{method:"POST",headers:{"Content-Type":"application/json"},body:JSON.stringify(body)});
  let j = {}; try { j = await r.json(); } catch(e) { j = {error: "HTTP " + r.status}; }
  if(!r.ok) throw new Error(j.error || ("HTTP " + r.status));
  return j;
}
function num(id){ const v=$(id).value; return v===""?null:Number(v); }
async function poll(id, box){
  let since = 0;
  for(;;){
    const j = await api("/api/jobs/" + id + "?since=" + since);
    for(const p of j.previews){ const im=new Image(); im.src=p.image; im.title="step "+p.step; $("previews").appendChild(im); }
    since = j.n_previews;
    $("status").textContent = j.kind + ": " + j.state + " (step " + j.step + " of " + j.total + ")";
    if(j.state === "done"){
      const r=$("result"); r.src=j.image; r.style.display="block"; r.dataset.job=j.id;
      $("dl-png").href=j.png; $("dl-npz").href=j.npz; $("downloads").style.display="block";
      $("status").textContent = j.kind + ": done in " + j.seconds + " s (job " + j.id + ")";
      lastJob = j; return j;
    }
    if(j.state === "error"){ showError(box, j.error); $("status").textContent = j.kind + ": failed"; return j; }
    await new Promise(res => setTimeout(res, 150));
  }
}
async function generate(){
  showError("error", ""); $("previews").innerHTML = ""; $("generate").disabled = true;
  const body = {sampler:$("sampler").value, steps:num("steps"), seed:num("seed"), num:num("num"), guidance_scale:num("guidance")||0};
  if(info.conditioning==="labels" && $("label").value!=="") body.label = Number($("label").value);
  if(info.conditioning==="captions" && $("prompt").value) body.prompt = $("prompt").value;
  try { const j = await api("/api/generate", body); $("status").textContent = "queued (job " + j.id + ")"; await poll(j.id, "error"); }
  catch(e){ showError("error", e.message); }
  finally { $("generate").disabled = false; }
}
// ---- editing canvas: the image, a mask (white = keep) and strokes, all at the run's resolution ----
function resetMask(){ const c=mask.getContext("2d"); c.fillStyle="#fff"; c.fillRect(0,0,inW,inH); strokes.getContext("2d").clearRect(0,0,inW,inH); }
function draw(){
  const c=$("canvas").getContext("2d"); c.imageSmoothingEnabled=false;
  c.clearRect(0,0,288,288); c.drawImage(img,0,0,288,288); c.drawImage(strokes,0,0,288,288);
  if($("task").value==="inpaint"){
    const d=mask.getContext("2d").getImageData(0,0,inW,inH).data; c.fillStyle="rgba(229,57,53,0.55)";
    const sx=288/inW, sy=288/inH;
    for(let y=0;y<inH;y++) for(let x=0;x<inW;x++) if(d[4*(y*inW+x)]<128) c.fillRect(x*sx,y*sy,Math.ceil(sx),Math.ceil(sy));
  }
}
function paint(ev){
  const r=$("canvas").getBoundingClientRect(), x=(ev.clientX-r.left)/r.width*inW, y=(ev.clientY-r.top)/r.height*inH;
  const b=Math.max(1,Number($("brush").value)||1), t=$("task").value;
  if(t==="inpaint"){ const c=mask.getContext("2d"); c.fillStyle="#000"; c.fillRect(Math.floor(x-b/2),Math.floor(y-b/2),b,b); }
  else { const c=strokes.getContext("2d"); c.fillStyle=$("color").value; c.fillRect(Math.floor(x-b/2),Math.floor(y-b/2),b,b); }
  draw();
}
let down=false;
$("canvas").addEventListener("pointerdown", e=>{down=true; paint(e);});
$("canvas").addEventListener("pointermove", e=>{ if(down) paint(e); });
window.addEventListener("pointerup", ()=>{down=false;});
function loadInto(src){
  return new Promise((res, rej)=>{ const im=new Image(); im.onload=()=>{ const c=img.getContext("2d"); c.imageSmoothingEnabled=true;
    c.clearRect(0,0,inW,inH); c.drawImage(im,0,0,inW,inH); resetMask(); draw(); res(); };
    im.onerror=()=>rej(new Error("that file is not an image the browser can read")); im.src=src; });
}
$("upload").addEventListener("change", ev=>{
  showError("edit-error",""); const f=ev.target.files[0]; if(!f) return;
  if(!/^image\/(png|jpeg)$/.test(f.type)){ showError("edit-error","upload a PNG or JPEG image (got "+(f.type||"an unknown type")+")"); return; }
  if(f.size > 1<<20){ showError("edit-error","the image is larger than 1 MB"); return; }
  const rd=new FileReader(); rd.onload=()=>loadInto(rd.result).catch(e=>showError("edit-error",e.message)); rd.readAsDataURL(f);
});
$("use-sample").addEventListener("click", async ()=>{
  showError("edit-error","");
  if(!lastJob || lastJob.kind!=="generate"){ showError("edit-error","generate samples first"); return; }
  const im=new Image(); im.onload=()=>{ // the grid's first cell: pad 1, then the (upscaled) image
    const s=Math.max(1,Math.floor(32/W)); const c=img.getContext("2d"); c.imageSmoothingEnabled=false;
    c.drawImage(im, s, s, W*s, H*s, 0, 0, inW, inH); resetMask(); draw(); };
  im.src=lastJob.image;
});
$("clear").addEventListener("click", ()=>{ resetMask(); draw(); });
$("task").addEventListener("change", ()=>{ setupTask(); });
$("strength").addEventListener("input", ()=>{ $("strength-v").textContent=$("strength").value; });
function composed(){ // the image with the strokes drawn on it
  const c=document.createElement("canvas"); c.width=inW; c.height=inH; const x=c.getContext("2d");
  x.drawImage(img,0,0); x.drawImage(strokes,0,0); return c.toDataURL("image/png");
}
async function runEdit(){
  showError("edit-error",""); $("previews").innerHTML=""; $("run-edit").disabled=true;
  const t=$("task").value;
  const body={task:t, image:composed(), sampler:$("sampler").value, steps:num("steps"), seed:num("seed"), strength:Number($("strength").value)};
  if(t==="inpaint") body.mask=mask.toDataURL("image/png");
  if(info.conditioning==="captions" && $("prompt").value){ body.prompt=$("prompt").value; body.guidance_scale=num("guidance")||0; }
  try { const j=await api("/api/edit", body); await poll(j.id, "edit-error"); }
  catch(e){ showError("edit-error", e.message); }
  finally { $("run-edit").disabled=false; }
}
$("run-edit").addEventListener("click", runEdit);
$("generate").addEventListener("click", generate);
const HINTS={inpaint:"Paint the part to regenerate (red); the rest is kept (RePaint).",
  sdedit:"Draw strokes on the image; SDEdit noises it to the strength and denoises it.",
  superres:"Upload a low-resolution image; the run generates its high-resolution version (SR3).",
  colorize:"Upload a grayscale image; the run colours it."};
function setupTask(){
  const t=$("task").value; $("taskhint").textContent=HINTS[t]||"This run supports no editing task.";
  if(img.width!==info.input_size[1] || img.height!==info.input_size[0]){ // resizing a canvas clears it: only once
    inW=info.input_size[1]; inH=info.input_size[0];
    for(const c of [img,mask,strokes]){ c.width=inW; c.height=inH; }
    resetMask();
  }
  draw();
}
async function init(){
  info = await api("/api/info");
  [ , H, W] = info.shape;
  $("runinfo").textContent = info.run + " - " + info.shape.join("x") + " - " +
    (info.conditioning==="none" ? "unconditional" : info.conditioning + " conditioning");
  for(const s of info.samplers){ const o=document.createElement("option"); o.value=o.textContent=s; if(s===info.default_sampler) o.selected=true; $("sampler").appendChild(o); }
  if(info.conditioning==="labels"){
    $("labelbox").style.display="block"; $("guidebox").style.display="block";
    const o=document.createElement("option"); o.value=""; o.textContent="(unconditional)"; $("label").appendChild(o);
    for(let k=0;k<info.num_classes;k++){ const o=document.createElement("option"); o.value=k; o.textContent=(info.class_names&&info.class_names[k])||k; $("label").appendChild(o); }
  }
  if(info.conditioning==="captions"){ $("promptbox").style.display="block"; $("guidebox").style.display="block"; }
  if(!info.generate) $("generate").disabled=true;
  for(const t of info.tasks){ const o=document.createElement("option"); o.value=o.textContent=t; $("task").appendChild(o); }
  if(!info.tasks.length) $("run-edit").disabled=true;
  setupTask();
  document.body.dataset.ready="1";
}
init().catch(e=>showError("error", "could not read the run: " + e.message));
</script></body></html>
"""
