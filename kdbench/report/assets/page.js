(function(){
function val(td){var v=td.getAttribute('data-value');if(v!==null&&v!==''&&!isNaN(parseFloat(v)))return parseFloat(v);
var t=td.textContent.trim();var n=parseFloat(t);return isNaN(n)?t.toLowerCase():n;}
document.querySelectorAll('table.sortable th').forEach(function(th){th.addEventListener('click',function(){
var table=th.closest('table'),body=table.tBodies[0],i=Array.prototype.indexOf.call(th.parentNode.children,th);
var asc=th.getAttribute('data-order')!=='asc';table.querySelectorAll('th').forEach(function(h){h.removeAttribute('data-order');});
th.setAttribute('data-order',asc?'asc':'desc');var rows=Array.prototype.slice.call(body.rows);
rows.sort(function(a,b){var x=val(a.cells[i]),y=val(b.cells[i]);if(typeof x!==typeof y){x=String(x);y=String(y);}
return (x<y?-1:x>y?1:0)*(asc?1:-1);});rows.forEach(function(r){body.appendChild(r);});});});
function apply(){var f={};document.querySelectorAll('.filters select').forEach(function(s){f[s.name]=s.value;});
document.querySelectorAll('[data-dataset]').forEach(function(el){var show=true;
['dataset','pair','scheme'].forEach(function(k){var v=el.getAttribute('data-'+k);if(f[k]&&v!==null&&v!==''&&v!==f[k])show=false;});
el.style.display=show?'':'none';});}
document.querySelectorAll('.filters select').forEach(function(s){s.addEventListener('change',apply);});})();
